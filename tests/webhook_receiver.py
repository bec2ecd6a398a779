"""A real HTTP webhook receiver for tests: a server on a free loopback port, in a thread.

It records every request (method, path, headers, body, arrival time) and answers
according to its behaviour, set at construction or changed while it runs::

    with WebhookReceiver() as rx:                    # 200 to everything
        settings = ... webhook_url=rx.url ...
        rx.wait_for(1, timeout=10)
        rx.requests[0].json()["type"]

    WebhookReceiver(fail_times=2, fail_status=503)   # 503 twice, then 200
    WebhookReceiver(fail_times=1, retry_after=3)     # 503 + Retry-After: 3 once, then 200
    WebhookReceiver(status=410)                      # always 410 Gone
    WebhookReceiver(delay_s=2.0)                     # sleeps before answering (timeouts)
    WebhookReceiver(trickle_s=0.2)                   # sends status line and headers one byte every 0.2 s
    WebhookReceiver(tls=context, url_host="localhost")  # https, URL https://localhost:<port>/hook;
                                                     # rx.sni lists the server names clients sent

The receiver's URL is ``http://127.0.0.1:<port>/hook``; any path is accepted
(``rx.url_for("/other")``). Loopback is refused by docproc's SSRF guard unless
allow-listed: tests set ``webhook_allow_hosts=["127.0.0.1"]``.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ReceivedRequest:
    """One request as the receiver saw it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival
    status: int = 0  # what the receiver answered

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A recording HTTP server; see the module docstring. Thread-safe reads via ``requests``."""

    status: int = 200
    fail_times: int = 0
    fail_status: int = 503
    retry_after: int | str | None = None  # sent with the failing answers
    delay_s: float = 0.0
    trickle_s: float = 0.0  # > 0: the status line and headers go out one byte at a time, this far apart
    body: bytes = b"ok"
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None  # serve https with this server context
    url_host: str | None = None  # the host name in url_for() (default: host)
    sni: list[str | None] = field(default_factory=list, init=False, repr=False)
    _requests: list[ReceivedRequest] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _cond: threading.Condition = field(init=False, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._cond = threading.Condition(self._lock)

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = ReceivedRequest(
                    method=self.command, path=self.path, body=body, at=time.time(),
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                status, extra = receiver._answer()
                record.status = status
                with receiver._cond:
                    receiver._requests.append(record)
                    receiver._cond.notify_all()
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                if receiver.trickle_s:
                    self._trickle(status)
                    return
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(receiver.body)))
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(receiver.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _trickle(self, status: int) -> None:
                head = (f"HTTP/1.1 {status} OK\r\nContent-Type: text/plain\r\nX-Slow: {'x' * 40}\r\n"
                        f"Content-Length: {len(receiver.body)}\r\n\r\n").encode()
                try:
                    for i in range(len(head)):
                        self.wfile.write(head[i:i + 1])
                        self.wfile.flush()
                        time.sleep(receiver.trickle_s)
                    self.wfile.write(receiver.body)
                except OSError:  # the client gave up (its deadline)
                    self.close_connection = True

            do_POST = do_GET = do_PUT = _handle

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:  # the handshake happens in accept(); a refused one drops that connection
            self.tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour -----------------------------------------------------------
    def _answer(self) -> tuple[int, dict[str, str]]:
        with self._lock:
            if self.fail_times > 0:
                self.fail_times -= 1
                extra = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
                return self.fail_status, extra
            return self.status, {}

    # --- reading -------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return self.url_for("/hook")

    def url_for(self, path: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.url_host or self.host}:{self.port}{path}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until at least ``count`` requests arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook receiver: {len(self._requests)} request(s) after "
                                         f"{timeout} s, expected {count}")
                self._cond.wait(left)
            return list(self._requests)
