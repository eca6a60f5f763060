"""The application: ``create_app(settings)`` and ``serve(...)`` (what ``melu serve`` runs).

The checkpoint is loaded in the lifespan handler, not at import, so importing this module is
cheap and each app (a test's, a benchmark's) owns its model. Run with uvicorn's factory mode::

    MELU_CHECKPOINT=runs/x/checkpoint.pt uvicorn --factory service.main:create_app
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from melu import __version__
from melu.checkpoint import Checkpoint, load
from melu.train import resolve_device
from service import errors
from service.batcher import MicroBatcher
from service.middleware import BodyGuard
from service.recommender import Job, Outcome, Recommender, TopK
from service.routes import router
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DESCRIPTION = """Cold-start recommendations: give a few ratings, get movies.

Each request adapts the meta-learned model to its ratings (a few gradient steps on the
decision layers, MeLU-style) and scores the catalogue with the adapted weights. Errors share one
shape, `{"detail": [{"loc", "field", "msg", "type"}]}`; see `service/README.md`.
"""


def example_curl(base_url: str, recommender: Recommender) -> str:
    wanted = [1193, 661, 914]  # MeLU's README example; any three catalogue ids otherwise
    ids = [i for i in wanted if i in recommender.rows] or recommender.item_ids[1:4]
    body = {
        "ratings": [{"item_id": i, "rating": r} for i, r in zip(ids, (5, 3, 4), strict=False)],
        "user": {"gender": "F", "age": 25},
        "k": 5,
    }
    return (
        f"curl -s {base_url}/recommend -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(body))}"
    )


def _build(
    settings: Settings, checkpoint: Checkpoint | None
) -> tuple[Recommender, MicroBatcher[Job, Outcome]]:
    """Load and warm up (blocking: runs in a thread while the event loop starts)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    if checkpoint is None:
        checkpoint = load(settings.checkpoint)
    recommender = Recommender(checkpoint, device, settings.local_steps)
    # The first adapt call pays one-time setup (allocations, lazy inits): before any client.
    unknown_user = tuple(recommender.encoder.encode_user({}))
    recommender.run([Job(unknown_user, (1,), (3.0,), TopK(1, None, ()))])
    batched = settings.micro_batching
    batcher: MicroBatcher[Job, Outcome] = MicroBatcher(
        recommender.run,
        max_size=settings.batch_max_size if batched else 1,
        max_wait_s=settings.batch_max_wait_ms / 1000.0 if batched else 0.0,
    )
    return recommender, batcher


def create_app(settings: Settings | None = None, checkpoint: Checkpoint | None = None) -> FastAPI:
    """A service for ``settings`` (default: from ``MELU_*`` environment variables).

    The checkpoint is loaded from ``settings.checkpoint`` at startup unless one is given
    already loaded (``serve`` loads it first, so that a bad path is a one-line error).
    """
    settings = settings if settings is not None else get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        recommender, batcher = await asyncio.to_thread(_build, settings, checkpoint)
        await batcher.start()
        app.state.recommender = recommender
        app.state.batcher = batcher
        log.info(
            "serving %d items from %s on %s (melu %s, best val MAE %s, %d local steps, "
            "micro-batching %s)",
            len(recommender),
            settings.checkpoint,
            recommender.device,
            recommender.info.version,
            recommender.info.best_val_mae,
            recommender.steps,
            f"up to {settings.batch_max_size}" if settings.micro_batching else "off",
        )
        base_url = getattr(app.state, "base_url", "http://127.0.0.1:8000")
        log.info("try: %s", example_curl(base_url, recommender))
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
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes)
    app.include_router(router)
    _mount_static(app)
    return app


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


def serve(
    checkpoint: Path | str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu"
) -> None:
    """Run the service with uvicorn until interrupted; other settings come from ``MELU_*``."""
    settings = Settings(checkpoint=Path(checkpoint), device=device)
    # Fail before uvicorn starts, so that the command line reports a MeluError in one line
    # instead of uvicorn's startup traceback.
    resolve_device(settings.device)
    app = create_app(settings, load(settings.checkpoint))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    app.state.base_url = f"http://{shown}:{port}"
    uvicorn.run(app, host=host, port=port, log_level="info")
