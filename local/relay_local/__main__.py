"""``make run``: serve the relay on http://127.0.0.1:3000 until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from relay_local.stack import DEV_API_KEY, DEV_SIGNING_SECRET, DevStack

if TYPE_CHECKING:
    from relay_local.sandbox import Received


def show(received: Received) -> None:
    """Print what a sandbox provider received, the way a provider's request log would."""
    verdict = "ok" if not received.violations else "; ".join(received.violations)
    body = json.dumps(received.json, ensure_ascii=False) if received.json is not None else "-"
    print(
        f"  sandbox <- {received.method} {received.path}  {body}  [{received.answered}] {verdict}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m relay_local", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--moto-port", type=int, default=int(os.environ.get("MOTO_PORT", "4566")))
    parser.add_argument(
        "--sandbox-ports",
        type=int,
        nargs=2,
        default=(3001, 3002),
        metavar=("LANCEPILOT", "FLUENTS"),
    )
    args = parser.parse_args()

    stack = DevStack(
        port=args.port,
        moto_port=args.moto_port,
        sandbox_ports=tuple(args.sandbox_ports),
        on_provider_request=show,
    ).start()
    providers = {
        name: stack.env[f"{name.upper()}_API_URL"]
        + ("  (sandbox)" if name in stack.sandboxes else "")
        for name in ("lancepilot", "fluents")
    }
    print(
        f"""
webhook-relay is running locally
  relay        POST {stack.url}/v1/messages
  AWS (moto)   {os.environ["AWS_ENDPOINT_URL"]}   secrets seeded with development values
  lancepilot   {providers["lancepilot"]}
  fluents      {providers["fluents"]}

  API key          {DEV_API_KEY}
  signing secret   {DEV_SIGNING_SECRET}
  workspace        {stack.env["LANCEPILOT_WORKSPACE_ID"]}   (LANCEPILOT_WORKSPACE_ID)
  from number      {stack.env["FLUENTS_FROM_NUMBER"]}   (FLUENTS_FROM_NUMBER)

Try:
  curl -s {stack.url}/v1/messages -H 'Authorization: Bearer {DEV_API_KEY}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"provider": "fluents", "to": "+14155550123", "text": "Hello from webhook-relay"}}'

Logs of the relay follow (JSON); sandbox lines show what a provider received. Ctrl-C stops.
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
