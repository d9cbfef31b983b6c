"""Run the relay on a laptop: moto for AWS, spec-checking sandbox providers, API Gateway emulated.

Development and test tooling only; none of it ships in the Lambda layer.
"""
