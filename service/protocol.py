"""uvicorn's h11 protocol with the limits a public server needs before any ASGI code runs.

uvicorn only times out idle keep-alive connections: a client that sends half a request line
(or nothing) holds its connection forever, and headers past h11's buffer limit get a plain
400 followed by a TCP reset. This subclass adds, per connection:

* a header deadline: the request line and headers must arrive within ``read_timeout`` seconds
  of the connection opening or of the previous response (408, then close);
* a header size limit: past ``max_header_bytes`` the answer is 431;
* error answers in the service's JSON error shape, and a short drain of what the client is
  still sending before closing, so that the client reads the answer instead of a reset.

The body's own timeout is the body guard's (:mod:`service.middleware`), where the body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

# After an error answer, read and drop at most this much (or for this long) before closing.
DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 1.0
# On shutdown, an idle keep-alive connection stays open this long: a request the client already
# sent (in the socket buffer, not yet read) is served, instead of being reset with the socket.
IDLE_LINGER_S = 0.5
# Set in a request's scope while the server drains: ResponseGuard then answers with
# ``Connection: close``, so that the client does not send its next request into a closing socket.
DRAINING = "melu.draining"


def error_body(status: int, msg: str, type_: str) -> bytes:
    detail = [{"loc": ["request"], "field": "request", "msg": msg, "type": type_}]
    return json.dumps({"detail": detail}, separators=(",", ":")).encode()


class GuardedH11Protocol(H11Protocol):
    """Limits from :func:`guarded_protocol`'s subclass, or else (a worker process importing this
    class by name) from the ``MELU_*`` settings."""

    read_timeout: float | None = None
    max_header_bytes: int | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if self.read_timeout is None or self.max_header_bytes is None:
            from service.settings import get_settings

            settings = get_settings()
            self._timeout, self._max_head = settings.read_timeout, settings.max_header_bytes
        else:
            self._timeout, self._max_head = self.read_timeout, self.max_header_bytes
        # h11 refuses a request whose head outgrows this buffer; we answer that with 431.
        config.h11_max_incomplete_event_size = self._max_head
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._drained = 0
        self._closing = False
        self._draining = False

    # --- the header deadline ---------------------------------------------------------------

    def _arm(self) -> None:
        if self._header_timer is None and not self._closing:
            self._header_timer = self.loop.call_later(self._timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_head(self) -> bool:
        """True between requests: no request of this connection is being handled."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            pending = self.conn.trailing_data[0]
            if not pending and self.cycle is not None:
                # Idle after a response: uvicorn's keep-alive timeout governs this case.
                return
            self._answer(408, "request: the request line and headers took too long", "timeout")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is also on the clock

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            # An error answer is out: drop what the client still sends, within a budget.
            self._drained += len(data)
            if self._drained > DRAIN_BYTES:
                self.transport.close()
            return
        if self._waiting_for_head():
            # The buffer holds at most one head (h11 refuses longer ones), so this copy is small.
            received = self.conn.trailing_data[0] + data
            end = received.find(b"\r\n\r\n")
            head = len(received) if end < 0 else end + 4
            if head > self._max_head:
                self._answer(
                    431,
                    f"request: the request line and headers exceed {self._max_head} bytes",
                    "headers_too_large",
                )
                return
        super().data_received(data)
        if self._draining:
            self._finish_current()
        if self._waiting_for_head() and self.conn.trailing_data[0]:
            self._arm()
        elif not self._waiting_for_head():
            self._disarm()

    # --- graceful shutdown ------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server stops: finish the request in progress, answer it with
        ``Connection: close``; an idle connection lingers briefly for a request in transit."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(IDLE_LINGER_S, self._close_if_idle)
        else:
            self._finish_current()

    def _finish_current(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.cycle.scope[DRAINING] = True  # type: ignore[literal-required]

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if (self.cycle is None or self.cycle.response_complete) and not (
            self.conn.trailing_data[0]
        ):
            if self.conn.our_state is not h11.ERROR:
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
            self.transport.close()
        else:
            self._finish_current()

    # --- error answers ---------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        # h11 raises on a head over its buffer limit as on any malformed request.
        if len(self.conn.trailing_data[0]) >= self._max_head:
            self._answer(
                431,
                f"request: the request line and headers exceed {self._max_head} bytes",
                "headers_too_large",
            )
        else:
            self._answer(400, f"request: {msg}", "bad_request")

    def _answer(self, status: int, msg: str, type_: str) -> None:
        """Send a JSON error with ``Connection: close``, drain briefly, then close."""
        self._disarm()
        self._unset_keepalive_if_required()
        if self._closing or self.transport.is_closing():
            return
        self._closing = True
        body = error_body(status, msg, type_)
        reason = {400: "Bad Request", 408: "Request Timeout"}.get(
            status, "Request Header Fields Too Large"
        )
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        # Written directly: h11's state machine may be in an error state by now.
        self.transport.write(head + body)
        self.flow.resume_reading()
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)


def guarded_protocol(read_timeout: float, max_header_bytes: int) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "MeluH11Protocol",
        (GuardedH11Protocol,),
        {"read_timeout": read_timeout, "max_header_bytes": max_header_bytes},
    )
