"""Put a canonical message on the local delivery queue, as any producer would (``make run``).

python -m relay_local.send '{"provider": "fluents", "to": "+14155550123", "text": "Hi"}'
"""

from __future__ import annotations

import argparse
import os

import boto3

from relay_local.stack import DEFAULT_MOTO_PORT, LOCAL_PREFIX


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m relay_local.send", description=__doc__)
    parser.add_argument("body", help="the message, as JSON")
    parser.add_argument(
        "--moto-port", type=int, default=int(os.environ.get("MOTO_PORT", DEFAULT_MOTO_PORT))
    )
    args = parser.parse_args()
    sqs = boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{args.moto_port}",
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto's
    )
    url = sqs.get_queue_url(QueueName=f"{LOCAL_PREFIX}-delivery")["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody=args.body)
    print(f"queued {sent['MessageId']} on {url}")


if __name__ == "__main__":
    main()
