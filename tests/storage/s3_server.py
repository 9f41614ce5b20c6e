"""A real S3-compatible server for the tests: moto in server mode on 127.0.0.1, behind a small HTTP proxy that
can answer chosen requests with a transient failure (503 Slow Down), as a loaded store does."""
from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FaultyProxy:
    """Forwards every request to `upstream_port`; `fail(suffix, times)` answers the next `times` GET requests
    whose path ends with `suffix` with 503 instead. `failures_served` counts them."""

    def __init__(self, upstream_port: int):
        self.upstream_port, self.pending, self.failures_served = upstream_port, {}, 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and proxy.take_failure(self.path.split("?")[0]):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # a HEAD answer has no body but the length of the object's
                length = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, suffix: str, times: int) -> None:
        with self.lock:
            self.pending[suffix] = times

    def take_failure(self, path: str) -> bool:
        with self.lock:
            for suffix, left in self.pending.items():
                if path.endswith(suffix) and left > 0:
                    self.pending[suffix] = left - 1
                    self.failures_served += 1
                    return True
        return False

    def close(self) -> None:
        self.server.shutdown()
