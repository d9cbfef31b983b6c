"""One delivery-function execution environment in its own process, polling the queue.

    python -m relay_local.worker --timeout 16

The relay's settings come from the environment (as the template sets them), AWS from
AWS_ENDPOINT_URL. The crash-recovery test kills this process mid-batch, as a Lambda timeout
would kill an execution environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

import boto3

from relay_local.esm import EventSourceMapping
from relay_local.lambda_runtime import load_function


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60.0, help="the function's timeout (s)")
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    handler = load_function("delivery").lambda_handler
    poller = EventSourceMapping(
        boto3.client("sqs"),
        os.environ["DELIVERY_QUEUE_URL"],
        handler,
        batch_size=args.batch_size,
        wait_seconds=1,
        timeout_s=args.timeout,
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("worker ready", flush=True)
    stop.wait()
    poller.stop()


if __name__ == "__main__":
    main()
