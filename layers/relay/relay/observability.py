"""The one place that creates the Logger (later Metrics and Tracer); all else imports them."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger

logger = Logger(service="webhook-relay")

# urllib3 logs retried URLs at WARNING, and Lancepilot's URL holds the recipient's number.
# The relay logs its own retries, masked, instead.
logging.getLogger("urllib3").setLevel(logging.ERROR)
