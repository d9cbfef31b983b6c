"""Benchmarks of the relay against hand-written floors: ``python -m benchmarks.<name> --quick``."""
