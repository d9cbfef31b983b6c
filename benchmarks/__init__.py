"""Benchmarks of the relay against hand-written floors: ``python -m benchmarks.<name> --quick``."""

import os

# Sign AWS requests as Lambda's runtime does, in Python: botocore would use awscrt's C signer,
# which the dev venv has and the runtime does not, wherever a benchmark runs the relay in its
# own process (batch, profile batch). Read when botocore is first imported, so set here.
os.environ.setdefault("BOTO_DISABLE_CRT", "true")
