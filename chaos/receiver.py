"""A local webhook receiver that records every delivery it gets (and whether its signature holds)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared import webhooks


@dataclass(frozen=True)
class Delivery:
    """One POST as received."""

    delivery_id: str
    event: str
    target: str  # the job's or batch's id
    signed: bool


class Receiver:
    """An HTTP server on a free loopback port, answering 200 to every POST."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                signature = self.headers.get(webhooks.SIGNATURE_HEADER, "")
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {}
                receiver.note(
                    Delivery(
                        delivery_id=self.headers.get(webhooks.DELIVERY_HEADER, ""),
                        event=self.headers.get(webhooks.EVENT_HEADER, ""),
                        target=str(data.get("id", "")),
                        signed=webhooks.verify_signature(receiver.secret, signature, body),
                    )
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                """Quiet: the soak prints one summary line."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="chaos-receiver").start()

    def note(self, delivery: Delivery) -> None:
        """Record one delivery."""
        with self._lock:
            self.received.append(delivery)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
