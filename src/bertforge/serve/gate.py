"""ASGI middleware in front of the app: it times every request for /metrics, checks the API key, and
reads the body (refusing one over the limit with a 413, one not in UTF-8 with a 400) before the app parses it."""

from __future__ import annotations

import hmac
import json
import time

from .metrics import Metrics
from .schemas import OPEN_PATHS

DRAIN_BYTES = 64 * 2**20  # an over-size body is read (and dropped) up to this, so the client sees the 413


class _Gate:
    """ASGI middleware: times every request for /metrics, checks the API key, and reads the body
    (refusing one over the limit) before the app parses it."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS:
                given = dict(scope["headers"]).get(b"authorization", b"")
                scheme, _, token = given.strip().partition(b" ")
                if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                    await _drain(receive)
                    msg = "missing API key: send 'Authorization: Bearer KEY'" if not given else "wrong API key"
                    return await _refuse(receive, send_status, 401, msg, [(b"www-authenticate", b"Bearer")])
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive)
                if body is None:
                    return await _refuse(receive, send_status, 413, f"request body over {self.max_body_bytes:,} bytes")
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError as e:
                    message = (
                        f"the body is not UTF-8 text (byte 0x{body[e.start]:02x} at {e.start}): send JSON in UTF-8"
                    )
                    return await _refuse(receive, send_status, 400, message)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.request(scope["path"], status, time.perf_counter() - start)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is over the limit (then read up to DRAIN_BYTES and dropped)."""
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes + DRAIN_BYTES:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
            elif size > self.max_body_bytes + DRAIN_BYTES:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks) if size <= self.max_body_bytes else None


async def _drain(receive) -> None:
    """Read (and drop) a refused request's body, up to DRAIN_BYTES, so that the client reads the answer."""
    size = 0
    while size <= DRAIN_BYTES:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(receive, send, status: int, message: str, headers: list | None = None) -> None:
    content = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
