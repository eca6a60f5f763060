"""Body guard: 415 for a body that is not JSON, 413 for one over ``max_body_bytes``, 408 for
one that does not arrive within ``read_timeout`` seconds.

A plain ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task per request). The size
is checked twice: against ``Content-Length`` before reading anything, and against the bytes
actually received, because a chunked upload has no length and a client may lie about it.
The body is read here, at most ``max_body_bytes`` of it, and replayed to the application.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RETRY_AFTER_S
from service.protocol import DRAINING

log = logging.getLogger(__name__)

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# A refused body is still read (and dropped) up to this size: closing a socket with unread
# data makes the kernel send a reset, which can destroy the error response before the client
# reads it. Past this, the connection is closed anyway.
DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_SECONDS = 5.0


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
    receive: Receive,
    send: Send,
    status: int,
    msg: str,
    type_: str,
    drained: bool = False,
    drain: bool = True,
    field: str = "body",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if not drained and drain:
        try:
            drained = await asyncio.wait_for(_drain(receive, DRAIN_BYTES), DRAIN_SECONDS)
        except asyncio.TimeoutError:  # a slow client: close rather than wait for it
            drained = False
    loc = [field] if field == "body" else []
    detail = [{"loc": loc, "field": field, "msg": f"{field}: {msg}", "type": type_}]
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    if not drained:
        headers.append((b"connection", b"close"))  # unread bytes: the connection is unusable
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# Routes whose work goes through the adaptation queue, refused early when it is full.
QUEUED_PATHS = frozenset({"/recommend", "/score"})


class BodyGuard:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        read_timeout: float = 10.0,
        overloaded: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.overloaded = overloaded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        if self.overloaded is not None and scope["path"] in QUEUED_PATHS and self.overloaded(scope):
            await _reject(
                receive,
                send,
                503,
                "the service is busy (MELU_MAX_QUEUE requests are waiting); retry later",
                "overloaded",
                field="request",
                extra_headers=[(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
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
        loop = asyncio.get_running_loop()
        # One deadline for the whole body: a client trickling a byte a second is as slow as one
        # that stops.
        deadline = loop.time() + self.read_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                await _reject(
                    receive,
                    send,
                    408,
                    f"the request body did not arrive within {self.read_timeout:g} seconds",
                    "timeout",
                    drained=False,
                    drain=False,
                )
                return
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


# The page and its assets come from this origin only; the docs page needs FastAPI's inline
# bootstrap script. frame-ancestors / X-Frame-Options: nothing may frame the page (clickjacking).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class ResponseGuard:
    """Outermost layer: security headers on every answer, and a JSON 500 for a bug.

    Starlette's own error middleware answers an unhandled exception in plain text and then
    re-raises it, so uvicorn logs it a second time and drops the keep-alive connection without
    saying ``Connection: close``: the client's next pooled request then fails with a reset.
    Here the exception is logged once and answered in the service's error shape with
    ``Connection: close``, so a client knows to reconnect.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(("/docs", "/redoc")) else PAGE_CSP
        started = False

        async def secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.extend(_SECURITY_HEADERS)
                headers.append((b"content-security-policy", csp.encode()))
                if scope.get(DRAINING) and (b"connection", b"close") not in headers:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, secured)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if started:
                raise  # too late for an answer; uvicorn closes the connection
            body = json.dumps(
                {
                    "detail": [
                        {
                            "loc": [],
                            "field": "request",
                            "msg": "internal error (logged on the server)",
                            "type": "internal_error",
                        }
                    ]
                },
                separators=(",", ":"),
            ).encode()
            await secured(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
