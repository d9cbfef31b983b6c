"""``make run``: serve the relay on http://127.0.0.1:3000 until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from relay_local.metrics_view import ReadableMetrics
from relay_local.stack import DEFAULT_MOTO_PORT, DEV_API_KEY, DEV_SIGNING_SECRET, DevStack

if TYPE_CHECKING:
    from relay_local.sandbox import Received

SEND_EXAMPLE = '{"provider": "lancepilot", "to": "+14155550123", "text": "Hi"}'


def show(received: Received) -> None:
    """Print what a sandbox provider received, the way a provider's request log would."""
    verdict = "ok" if not received.violations else "; ".join(received.violations)
    body = json.dumps(received.json, ensure_ascii=False) if received.json is not None else "-"
    line = (
        f"  sandbox <- {received.method} {received.path}  {body}  [{received.answered}] {verdict}"
    )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m relay_local", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument(
        "--moto-port", type=int, default=int(os.environ.get("MOTO_PORT", DEFAULT_MOTO_PORT))
    )
    parser.add_argument(
        "--sandbox-ports",
        type=int,
        nargs=2,
        default=(3001, 3002),
        metavar=("LANCEPILOT", "FLUENTS"),
    )
    args = parser.parse_args()

    # Before the handlers load: their logger and metrics write to this stdout.
    sys.stdout = ReadableMetrics(sys.stdout)
    stack = DevStack(
        port=args.port,
        moto_port=args.moto_port,
        sandbox_ports=tuple(args.sandbox_ports),
        on_provider_request=show,
    ).start()
    env = stack.env
    # For tools and tests that start this with port 0: where everything ended up.
    print(f"READY relay={stack.url} moto={os.environ['AWS_ENDPOINT_URL']}", flush=True)
    providers = {
        name: env[f"{name.upper()}_API_URL"] + ("  (sandbox)" if name in stack.sandboxes else "")
        for name in ("lancepilot", "fluents")
    }
    print(
        f"""
webhook-relay is running locally
  relay         POST {stack.url}/v1/messages
  AWS (moto)    {os.environ["AWS_ENDPOINT_URL"]}   secrets, queues, table: local values
  queue         {env["DELIVERY_QUEUE_URL"]}   (the delivery function polls it)
  dead letters  {env["DEAD_LETTER_QUEUE_URL"]}
  lancepilot    {providers["lancepilot"]}
  fluents       {providers["fluents"]}

  API key          {DEV_API_KEY}
  signing secret   {DEV_SIGNING_SECRET}
  workspace        {env["LANCEPILOT_WORKSPACE_ID"]}   (LANCEPILOT_WORKSPACE_ID)
  from number      {env["FLUENTS_FROM_NUMBER"]}   (FLUENTS_FROM_NUMBER)

Send now:
  curl -s {stack.url}/v1/messages -H 'Authorization: Bearer {DEV_API_KEY}' \\\\
    -H 'Content-Type: application/json' \\\\
    -d '{{"provider": "fluents", "to": "+14155550123", "text": "Hello from webhook-relay"}}'
Queue it instead: add -H 'Prefer: respond-async'. Or put it on the queue as a producer would:
  .venv/bin/python -m relay_local.send '{SEND_EXAMPLE}'

Logs of the relay follow (JSON), with each metric it publishes as a "metric" line; sandbox
lines show what a provider received. Ctrl-C stops.
""",
        flush=True,
    )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
