"""A real uvicorn server in a thread of the test process, for the service tests.

The socket is bound first and handed to uvicorn, so there is no race for a "free" port.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.main import uvicorn_config


@dataclass
class Threaded:
    app: FastAPI
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()


def start_server(app: FastAPI) -> Threaded:
    """Serve ``app`` (its ``app.state.settings``) until :func:`stop_server`; fails the test if it
    does not start within two minutes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, app.state.settings, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the service did not start", pytrace=False)
        time.sleep(0.02)
    return Threaded(app, sock.getsockname()[1], server, thread)


def stop_server(running: Threaded) -> None:
    running.server.should_exit = True
    running.thread.join(timeout=30)
