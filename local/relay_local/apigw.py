"""A local stand-in for API Gateway's HTTP API: real HTTP in, payload format 2.0 events out."""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from relay_local.lambda_runtime import LambdaContext

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's own limit; the relay refuses far less itself


def to_event(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    route_key: str,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The event API Gateway would hand the function for this request (payload format 2.0)."""
    url = urlsplit(target)
    lowered: dict[str, str] = {}
    for name, value in headers.items():  # HTTP APIs join repeated headers with commas
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    request_id = base64.b64encode(uuid.uuid4().bytes[:11]).decode()
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": url.path,
        "rawQueryString": url.query,
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": url.path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


class HttpApi:
    """Routes ``METHOD /path`` to handlers. Each handler is one execution environment and, like
    Lambda's, takes one invocation at a time; give a route several to serve in parallel."""

    def __init__(
        self, routes: Mapping[str, Handler | list[Handler]], timeout_s: float = 28.0
    ) -> None:
        self.timeout_s = timeout_s
        self._free: dict[str, queue.Queue[Handler]] = {}
        for key, handlers in routes.items():
            pool: queue.Queue[Handler] = queue.Queue()
            for handler in handlers if isinstance(handlers, list) else [handlers]:
                pool.put(handler)
            self._free[key] = pool
        self._server: ThreadingHTTPServer | None = None

    def invoke(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request the way the deployed HTTP API would."""
        route_key = f"{method} {urlsplit(target).path}"
        pool = self._free.get(route_key)
        json_type = {"content-type": "application/json"}
        if pool is None:
            return 404, json_type, b'{"message":"Not Found"}'
        if len(body) > MAX_PAYLOAD:
            return 413, json_type, b'{"message":"Request Entity Too Large"}'
        event = to_event(method, target, headers, body, route_key)
        handler = pool.get()  # waits for a free environment
        try:
            result = handler(event, LambdaContext(timeout_s=self.timeout_s))
        finally:
            pool.put(handler)
        payload = result.get("body") or ""
        raw = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        answer_headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        return int(result.get("statusCode", 200)), answer_headers, raw

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        """Serve from a daemon thread; the returned server's ``server_address`` has the port."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # see sandbox._Handler

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                started = time.monotonic()
                status, headers, raw = api.invoke(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(raw)))
                self.send_header("x-local-latency-ms", f"{(time.monotonic() - started) * 1000:.1f}")
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def json_body(raw: bytes) -> Any:
    return json.loads(raw) if raw else None
