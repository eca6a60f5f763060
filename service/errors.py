"""One error shape for every 4xx answer: ``{"detail": [{"loc", "field", "msg", "type"}]}``.

FastAPI's validation errors, our own checks against the model, and the body guard's 413/415
all use it, so a client parses one shape. ``msg`` starts with the field, so that it reads on its
own. The offending input is never echoed back: it may be huge, and a NaN in it would not even
serialise to JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batcher import BatcherClosedError, DeadlineError, QueueFullError, WorkerLostError

Loc = tuple[str | int, ...]
_SOURCES = {"body", "query", "path", "header", "cookie"}


@dataclass(frozen=True)
class FieldError:
    loc: Loc
    msg: str
    type: str = "value_error"


class InputError(Exception):
    """Request input that parsed but does not fit the model (unknown ids, limits, values)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(e.msg for e in errors))
        self.errors = list(errors)


def field_name(loc: Sequence[str | int]) -> str:
    """``("body", "ratings", 2, "item_id")`` -> ``"ratings[2].item_id"``."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in _SOURCES:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "request"


def error_item(loc: Sequence[str | int], msg: str, type_: str) -> dict[str, Any]:
    name = field_name(loc)
    return {"loc": list(loc), "field": name, "msg": f"{name}: {msg}", "type": type_}


def error_response(status: int, items: Iterable[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": list(items)}, status_code=status)


def _from_pydantic(error: Any) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    type_ = str(error.get("type", "value_error"))
    msg = str(error.get("msg", "invalid value"))
    ctx = error.get("ctx") or {}
    if type_ == "json_invalid":
        position = loc[1] if len(loc) > 1 else None
        where = f" at character {position}" if isinstance(position, int) else ""
        return error_item(("body",), f"invalid JSON{where}: {ctx.get('error', msg)}", type_)
    if type_ == "missing" and loc == ("body",):
        return error_item(loc, "a JSON object is required", type_)
    if type_ == "value_error" and "error" in ctx:
        msg = str(ctx["error"])
    return error_item(loc, msg, type_)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, (_from_pydantic(e) for e in exc.errors()))


async def _input_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return error_response(422, (error_item(e.loc, e.msg, e.type) for e in exc.errors))


# Seconds a client should wait before retrying a request the service refused under load.
RETRY_AFTER_S = 1


async def _overload_handler(request: Request, exc: Exception) -> JSONResponse:
    """503 with ``Retry-After``: the work was not done, and trying again later is right."""
    if isinstance(exc, QueueFullError):
        msg, type_ = f"the service is busy ({exc}); retry later", "overloaded"
    elif isinstance(exc, WorkerLostError):
        msg, type_ = "the model worker stopped while computing this request; retry", "worker_lost"
    elif isinstance(exc, DeadlineError):
        msg = "the request did not finish within MELU_REQUEST_TIMEOUT; retry later"
        type_ = "timeout"
    else:
        assert isinstance(exc, BatcherClosedError)
        msg, type_ = "the service is shutting down; retry later", "shutting_down"
    item = {"loc": [], "field": "request", "msg": msg, "type": type_}
    response = error_response(503, [item])
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # FastAPI's only 400 is a body it could not parse (JSON nested too deeply, bad encoding).
    if exc.status_code == 400:
        item = error_item(("body",), f"could not be parsed ({exc.detail})", "body_unparsable")
    else:
        item = {"loc": [], "field": "request", "msg": str(exc.detail), "type": "http"}
    response = error_response(exc.status_code, [item])
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def install(app: FastAPI) -> None:
    for overload in (QueueFullError, DeadlineError, BatcherClosedError, WorkerLostError):
        app.add_exception_handler(overload, _overload_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(InputError, _input_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
