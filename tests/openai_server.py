"""A small OpenAI-compatible chat-completions server on loopback, for the ``openai`` engine tests.

A real HTTP server (``ThreadingHTTPServer`` in a thread) speaking
``POST /v1/chat/completions``. It checks every request's shape (model, messages
with ``image_url`` data URLs that decode as PNG or JPEG, ``response_format``
json_schema exactly for extract, the bearer token) and answers:

- extract: JSON generated from the request's schema, valid under it;
- ocr: Markdown text; tables: a Markdown table.

Knobs (attributes, set before or between requests): ``fail`` (a list of statuses
to answer first, one per request: ``429`` carries ``Retry-After: retry_after``),
``delay_s`` (each answer waits this long), ``garbage`` (answer 200 with a body
that is not JSON). It records every request (``requests``, ``arrivals``), the
shape problems it found (``problems``) and the most requests in flight at once
(``max_in_flight``).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
from PIL import Image

OCR_ANSWER = "# Test page\n\nHello from the test server."
TABLES_ANSWER = "| item | amount |\n| --- | --- |\n| Widget | 12.50 |"


def sample_value(node: dict[str, Any]) -> Any:
    """A value valid under ``node`` (the subset of JSON Schema the extraction schemas use)."""
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return next((v for v in node["enum"] if v is not None), node["enum"][0])
    types = node.get("type", "null")
    types = [types] if isinstance(types, str) else list(types)
    if "object" in types:
        return {k: sample_value(v) for k, v in (node.get("properties") or {}).items()}
    if "array" in types:
        return [sample_value(node.get("items") or {})] if node.get("maxItems", 1) >= 1 else []
    if "string" in types:
        if node.get("format") == "date":
            return "2026-01-31"
        if "pattern" not in node:
            return "Sample"[: node.get("maxLength", 6)]
    if "number" in types or "integer" in types:
        return 12
    if "null" in types:
        return None
    if "boolean" in types:
        return True
    raise ValueError(f"cannot make a sample for {node}")


class FakeChatServer:
    """The server; use as a context manager (``url`` is the ``/v1`` base URL)."""

    def __init__(self, *, model: str = "internvl-test", api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        self.fail: list[int] = []
        self.retry_after: str | None = None
        self.delay_s = 0.0
        self.garbage = False
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.problems: list[str] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- checks --

    def check(self, body: Any, headers: Any) -> list[str]:
        """What is wrong with one request (empty: nothing)."""
        problems = []
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            problems.append("missing or wrong bearer token")
        if not isinstance(body, dict):
            return [*problems, "the body is not a JSON object"]
        if body.get("model") != self.model:
            problems.append(f"model {body.get('model')!r}, expected {self.model!r}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return [*problems, "no messages"]
        images = 0
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant"):
                problems.append(f"bad role {m.get('role')!r}")
            content = m.get("content")
            if isinstance(content, str):
                continue
            for item in content or []:
                if item.get("type") == "image_url":
                    images += 1
                    problems += self._check_image(item.get("image_url", {}).get("url", ""))
                elif item.get("type") != "text" or not isinstance(item.get("text"), str):
                    problems.append(f"bad content item {item!r:.80}")
        if images != 1:
            problems.append(f"{images} images, expected 1")
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            problems.append("no max_tokens")
        fmt = body.get("response_format")
        if fmt is not None:
            try:
                assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"]
                jsonschema.Draft202012Validator.check_schema(fmt["json_schema"]["schema"])
            except Exception as exc:  # noqa: BLE001 - reported as a problem
                problems.append(f"bad response_format: {exc!r:.120}")
        return problems

    @staticmethod
    def _check_image(url: str) -> list[str]:
        head, _, data = url.partition(",")
        if head not in ("data:image/png;base64", "data:image/jpeg;base64"):
            return [f"image URL is not a PNG/JPEG data URL: {url[:40]!r}"]
        try:
            image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
            image.load()
        except Exception as exc:  # noqa: BLE001
            return [f"image does not decode: {exc}"]
        if image.format.lower() != head.split("/")[1].split(";")[0]:
            return [f"image is {image.format}, the data URL says {head}"]
        return []

    def answer(self, body: dict[str, Any]) -> str:
        fmt = body.get("response_format")
        if fmt is not None:
            schema = fmt["json_schema"]["schema"]
            value = sample_value(schema)
            jsonschema.validate(value, schema)
            return json.dumps(value)
        prompt = " ".join(i.get("text", "") for m in body["messages"] if isinstance(m["content"], list)
                          for i in m["content"])
        return TABLES_ANSWER if "table" in prompt.split("\n", 1)[0].lower() else OCR_ANSWER

    # -- HTTP --

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: bytes, ctype: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.arrivals.append(time.monotonic())
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                    status = server.fail.pop(0) if server.fail else 200
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if self.path != "/v1/chat/completions":
                        return self._send(404, b'{"error": {"message": "not found"}}')
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    problems = server.check(body, self.headers)
                    with server._lock:
                        server.requests.append(body)
                        server.problems += problems
                    if problems:
                        return self._send(400, json.dumps({"error": {"message": "; ".join(problems)}}).encode())
                    if status != 200:
                        extra = {"Retry-After": server.retry_after} if status == 429 and server.retry_after else {}
                        return self._send(status, b'{"error": {"message": "try again"}}', headers=extra)
                    if server.garbage:
                        return self._send(200, b"<html>502 bad gateway</html>", ctype="text/html")
                    completion = {
                        "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion",
                        "created": int(time.time()), "model": server.model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": server.answer(body)}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                    return self._send(200, json.dumps(completion).encode())
                finally:
                    with server._lock:
                        server._in_flight -= 1

        return Handler
