"""Body guard: 415 for a body that is not JSON, 413 for one over ``max_body_bytes``.

A plain ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task per request). The size
is checked twice: against ``Content-Length`` before reading anything, and against the bytes
actually received, because a chunked upload has no length and a client may lie about it.
The body is read here, at most ``max_body_bytes`` of it, and replayed to the application.
"""

from __future__ import annotations

import email.message
import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# A refused body is still read (and dropped) up to this size: closing a socket with unread
# data makes the kernel send a reset, which can destroy the error response before the client
# reads it. Past this, the connection is closed anyway.
DRAIN_BYTES = 4 * 1024 * 1024


def is_json(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _drain(receive: Receive, budget: int) -> bool:
    """Read and drop the rest of the body; False if it is longer than ``budget``."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if budget < 0:
            return False


async def _reject(
    receive: Receive, send: Send, status: int, msg: str, type_: str, drained: bool = False
) -> None:
    if not drained:
        drained = await _drain(receive, DRAIN_BYTES)
    detail = [{"loc": ["body"], "field": "body", "msg": f"body: {msg}", "type": type_}]
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if not drained:
        headers.append((b"connection", b"close"))  # unread bytes: the connection is unusable
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        content_type = headers.get("content-type")
        # A missing Content-Type is read as JSON (as FastAPI does); a different one is refused,
        # which catches curl's default form encoding with a message that says what to send.
        if content_type is not None and not is_json(content_type):
            await _reject(
                receive,
                send,
                415,
                f"Content-Type must be application/json, got {content_type!r}",
                "unsupported_media_type",
            )
            return
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(
                receive,
                send,
                413,
                f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes",
                "body_too_large",
            )
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _reject(
                    receive,
                    send,
                    413,
                    f"request body exceeds the limit of {limit} bytes",
                    "body_too_large",
                    drained=not message.get("more_body", False),
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)
