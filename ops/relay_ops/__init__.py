"""Operator tools for a deployed relay (``relay dlq ...``)."""
