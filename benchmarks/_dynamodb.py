"""A DynamoDB stand-in for the batch benchmark: every call answered after a delay, concurrently.

    python -m benchmarks._dynamodb <host> <delay ms>      (see DynamoDBProcess)

moto_server answers a batch's writes one at a time (one lock, one GIL), so against it a
100-message batch waits on moto, not on the providers' concurrency limit. DynamoDB answers many
calls at once. This answers every request in its own thread, after ``delay ms`` (a round trip),
with ``{}``: what PutItem and UpdateItem return on success, and BatchWriteItem with nothing left
unprocessed; every key in the benchmark is fresh, so every conditional write succeeds. The
clients still do all their own work (parameter validation where they make it, serialising,
SigV4 signing, HTTP on a kept-alive connection, parsing the answer);
only the table is missing. It checks nothing: it is a clock, not a model. Its own process, so
its CPU is not the handler's (as the provider stand-ins, benchmarks/_providers.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from benchmarks import spawn
from relay_local.stack import end


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as DynamoDB's endpoint
    # The answer in one segment: headers and body written apart would each wait on the client's
    # delayed ACK (Nagle), 40 ms a call on loopback.
    disable_nagle_algorithm = True
    wbufsize = -1
    delay_s = 0.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay_s)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", "benchmark")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(host: str, delay_ms: float) -> None:
    _Answer.delay_s = delay_ms / 1000
    server = ThreadingHTTPServer((host, 0), _Answer)
    server.daemon_threads = True
    print(f"http://{host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


class DynamoDBProcess:
    """The parent's side: start the stand-in, read its URL, stop it."""

    def __init__(self, host: str, delay_ms: float) -> None:
        self._process = spawn("_dynamodb", host, str(delay_ms), stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError(f"the DynamoDB stand-in ended (exit {self._process.poll()})")

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        end(self._process)


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
