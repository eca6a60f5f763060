"""The application: ``create_app(settings)`` and ``serve(...)`` (what ``melu serve`` runs).

The checkpoint is loaded in the lifespan handler, not at import, so importing this module is
cheap and each app (a test's, a benchmark's) owns its model. Run with uvicorn's factory mode::

    MELU_CHECKPOINT=runs/x/checkpoint.pt uvicorn --factory service.main:create_app
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path
from uvicorn.supervisors import Multiprocess

from melu import __version__
from melu.checkpoint import Checkpoint
from melu.errors import MeluError
from melu.train import resolve_device
from service import errors
from service.batcher import MicroBatcher
from service.middleware import BodyGuard, ResponseGuard
from service.protocol import guarded_protocol
from service.recommender import Job, Outcome, Recommender
from service.routes import ClientGoneError, router
from service.schemas import EXAMPLE_REQUEST, example_request, model_schema
from service.settings import Settings, from_environment, get_settings
from service.worker import ModelWorker, build

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
GIL_SWITCH_S = 5e-5
DESCRIPTION = """Cold-start recommendations: give a few ratings, get movies.

Each request adapts the meta-learned model to its ratings (its local update: a few gradient
steps of the user's fast weights, MAML-style) and scores the catalogue with the adapted
weights, exactly as `melu evaluate` scores it.

- Ratings are on the model's scale (`GET /model`: `rating_scale`; 0.5..5.0 in half stars for
  ml-latest-small, 1..5 for MeLU's data); an off-scale rating is refused with 422 naming
  `ratings[i].rating` and the scale.
- User fields: only those the model reads (`GET /model`: `user_fields`, none for the CSV
  releases). Others are ignored, and named in `adaptation.ignored_user_fields` with why.
- `/recommend` lists the recommendable items (those with training ratings) minus the rated
  ones; a request's `candidates` may name any catalogue item, new items included: that is how
  new releases reach a user.

Errors share one shape, `{"detail": [{"loc", "field", "msg", "type"}]}`; see
`service/README.md`.
"""


def _example(recommender: Recommender) -> dict[str, Any]:
    """The example request for this model: its catalogue, the user fields it reads."""
    return example_request(recommender.item_ids[1:], recommender.user_fields, recommender.rows)


def example_curl(base_url: str, recommender: Recommender | None = None) -> str:
    """The one example request (the READMEs, the startup log and the OpenAPI example)."""
    body = EXAMPLE_REQUEST if recommender is None else _example(recommender)
    return (
        f"curl -s {base_url}/recommend -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(body))}"
    )


def _open_the_page(base_url: str) -> str:
    """The startup line a new user looks for: where the page is (or that there is none)."""
    if not (STATIC_DIR / "index.html").is_file():
        return f"no page in this installation; the API is at {base_url}/"
    return f"open the page: {base_url}/ (rate a few movies, get recommendations)"


def _batcher(settings: Settings, worker: ModelWorker) -> MicroBatcher[Job, Outcome]:
    batched = settings.micro_batching
    return MicroBatcher(
        worker.run,
        max_size=settings.batch_max_size if batched else 1,
        max_wait_s=settings.batch_max_wait_ms / 1000.0 if batched else 0.0,
        max_queue=settings.max_queue,
        on_idle=worker.idle,
        executor=worker.executor,
    )


def create_app(
    settings: Settings | None = None,
    checkpoint: Checkpoint | None = None,
    recommender: Recommender | None = None,
) -> FastAPI:
    """A service for ``settings`` (default: from ``MELU_*`` environment variables).

    The model is loaded from ``settings.checkpoint`` at startup unless one is given already
    loaded or built (``serve`` builds it first, so that a bad checkpoint is a one-line error
    before the server listens).
    """
    settings = settings if settings is not None else get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = recommender
        if built is None:
            # With a worker process this copy only encodes requests and describes items.
            compute = not settings.model_process
            built = await asyncio.to_thread(build, settings, checkpoint, compute=compute)
        worker = ModelWorker(settings, built)
        batcher = _batcher(settings, worker)
        if worker.in_process:
            # The event loop and the torch thread share the GIL. The thread releases it inside
            # every torch op and must win it back after each; at Python's default 5 ms switch
            # interval a loop busy with cheap requests (/items, /health floods) made every
            # reacquisition wait. 0.05 ms keeps those waits short.
            sys.setswitchinterval(GIL_SWITCH_S)
        await batcher.start()
        try:
            # Also waits for a worker process to load its model: requests come after.
            app.state.model_device = await batcher.call(worker.device)
        except BaseException:
            await batcher.stop()
            raise
        app.state.recommender = built
        app.state.batcher = batcher
        app.state.model_sha256 = worker.sha256
        log.info(
            "serving %d items from %s on %s in %s (melu %s, best val MAE %s, %d local steps, "
            "micro-batching %s)",
            len(built),
            settings.checkpoint,
            app.state.model_device,
            "this process" if worker.in_process else "a worker process",
            built.info.version,
            built.info.best_val_mae,
            built.steps,
            f"up to {settings.batch_max_size}" if settings.micro_batching else "off",
        )
        base_url = getattr(app.state, "base_url", None)
        if base_url is not None:
            log.info("%s", _open_the_page(base_url))
            log.info("try: %s", example_curl(base_url, built))
            log.info("API docs: %s/docs", base_url)
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="melu",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Swagger UI from this server (see _mount_docs), not from a CDN: /docs works offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    _model_openapi(app)
    errors.install(app)
    app.add_exception_handler(ClientGoneError, _client_gone)
    app.add_middleware(
        BodyGuard,
        max_body_bytes=settings.max_body_bytes,
        read_timeout=settings.read_timeout,
        overloaded=_overloaded,
    )
    app.add_middleware(ResponseGuard)  # outermost: sees every answer, catches every bug
    app.include_router(router)
    # No trailing-slash redirects: they built an absolute Location from the client's Host
    # header, and no route of this API ends in a slash.
    app.router.redirect_slashes = False
    _mount_docs(app)
    _mount_static(app)
    return app


def _model_openapi(app: FastAPI) -> None:
    """/openapi.json with the loaded model's rating scale, user fields and example (the
    document is built on its first request, after the lifespan loaded the model)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        recommender: Recommender | None = getattr(app.state, "recommender", None)
        schema = plain()
        if recommender is not None:
            schema = model_schema(
                schema, recommender.scale, recommender.user_fields, _example(recommender)
            )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _overloaded(scope: Scope) -> bool:
    """Whether the adaptation queue is full: then /recommend and /score are refused before
    their body is parsed, the cheapest refusal there is."""
    batcher: MicroBatcher[Job, Outcome] | None = getattr(scope["app"].state, "batcher", None)
    return batcher is not None and batcher.refuse_if_full()


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this; 499 is what proxies log for a client that closed the request.
    return Response(status_code=499)


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI with its files served from the ``swagger-ui-bundle`` package."""
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="melu - API docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def _mount_static(app: FastAPI) -> None:
    """The web page, when there is one (it is optional: the API stands alone)."""
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        # Read per request: the page is small and edits show without a restart.
        return HTMLResponse(index.read_text(encoding="utf-8"))


def uvicorn_config(app: FastAPI | str, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's configuration for this service: the guarded protocol (header deadline and
    size, :mod:`service.protocol`) and a graceful shutdown of ``MELU_SHUTDOWN_GRACE``."""
    http: type[asyncio.Protocol] | str
    if isinstance(app, str):
        # Worker processes import the class by name and read the limits from MELU_*.
        http = "service.protocol:GuardedH11Protocol"
    else:
        http = guarded_protocol(settings.read_timeout, settings.max_header_bytes)
    return uvicorn.Config(
        app,
        http=http,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        **kwargs,
    )


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or a one-line ``MeluError`` (port in use, bad address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise MeluError(f"--host {host}: cannot resolve it ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise MeluError(
            f"cannot listen on {host}:{port}: {reason} (another server there? pick --port)"
        ) from None
    sock.set_inheritable(True)  # worker processes serve on it too
    return sock


def serve(
    checkpoint: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    workers: int = 1,
    threads: int | None = None,
) -> None:
    """Run the service with uvicorn until interrupted; other settings come from ``MELU_*``.

    Everything that can fail on the user's input (settings, the port, the checkpoint) fails
    here, as a ``MeluError`` the command line prints in one line, before the server listens.
    With ``workers`` > 1, that many processes (each with its own model) share the port.
    ``threads`` (``melu --threads``): torch threads of the model, wherever it computes (the
    worker process is spawned, so the command line's own setting does not reach it).
    """
    overrides: dict[str, Any] = {"torch_threads": threads} if threads else {}
    settings = from_environment(checkpoint=Path(checkpoint), device=device, **overrides)
    sock = listen(host, port)
    try:
        resolve_device(settings.device)  # a device this machine lacks fails here, in one line
        # With a worker process, the server's own copy only encodes requests (the worker loads
        # the model on the device): this build is the checkpoint's check.
        recommender = build(settings, compute=not settings.model_process)
    except BaseException:
        sock.close()
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base_url = f"http://{shown}:{port}"
    if workers == 1:
        app = create_app(settings, recommender=recommender)
        app.state.base_url = base_url
        uvicorn.Server(uvicorn_config(app, settings, log_level="info")).run(sockets=[sock])
        return
    # Each worker loads its own copy; the parent's was only the check above.
    del recommender
    os.environ["MELU_CHECKPOINT"] = str(settings.checkpoint)
    os.environ["MELU_DEVICE"] = settings.device
    if settings.torch_threads is not None:
        os.environ["MELU_TORCH_THREADS"] = str(settings.torch_threads)
    config = uvicorn_config(
        "service.main:create_app", settings, factory=True, workers=workers, log_level="info"
    )
    log.info("starting %d worker processes; %s", workers, _open_the_page(base_url))
    log.info("try: %s", example_curl(base_url))
    Multiprocess(config, sockets=[sock]).run()
