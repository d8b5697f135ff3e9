"""Whether this replica can serve: ``GET /healthz`` for load balancers and probes, the
503 of every API request while the replica is not healthy, and the 503 (not a 500)
of a request whose database connection failed.

``app.state.healthy`` is False while the replica has stopped following labs because
it lost its database (its leases lapse; another replica takes its labs over).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("lablink.backend")

PROBE_SECONDS = 2.0  # the database must answer SELECT 1 within this
RETRY_AFTER = "5"
UNHEALTHY = (
    "This backend lost its database connection and stopped following labs; try again in a "
    "few seconds."
)
UNREACHABLE = "The backend cannot reach its database just now; try again in a few seconds."
# the API's own description is served while unhealthy (it needs no database)
ALWAYS_SERVED = frozenset({"/api/v1/openapi.json", "/api/v1/docs"})
DB_MODULES = ("sqlalchemy.", "asyncpg.", "aiosqlite.")

router = APIRouter()


class HealthzOut(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None


@router.get(
    "/healthz",
    response_model=HealthzOut,
    response_model_exclude_none=True,
    responses={503: {"model": HealthzOut, "description": "This replica cannot serve now."}},
)
async def healthz(request: Request) -> Any:
    """Whether this replica can serve (no token: for load balancers and probes): 200
    when it follows labs and its database answers within 2 s, else 503 with a
    sentence."""
    state = request.app.state
    if not getattr(state, "healthy", True):
        return _unavailable(UNHEALTHY)
    store = getattr(state, "store", None)
    if store is None:
        return _unavailable("This backend is starting or stopping.")
    try:
        await asyncio.wait_for(_select_one(store.engine), PROBE_SECONDS)
    except TimeoutError:
        return _unavailable(
            f"The backend's database did not answer within {PROBE_SECONDS:g} seconds."
        )
    except Exception as exc:
        if not db_unreachable(exc):
            raise
        log.warning("healthz: the database does not answer: %s", error_line(exc))
        return _unavailable(UNREACHABLE)
    return HealthzOut(status="ok")


async def _select_one(engine: Any) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _unavailable(sentence: str) -> JSONResponse:
    return JSONResponse(
        {"status": "unavailable", "detail": sentence},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER},
    )


class WhileUnhealthy:
    """Answers every /api/v1 request with 503 while ``app.state.healthy`` is False."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            app = scope.get("app")
            healthy = getattr(app.state, "healthy", True) if app is not None else True
            if not healthy and path.startswith("/api/v1/") and path not in ALWAYS_SERVED:
                response = JSONResponse(
                    {"detail": UNHEALTHY}, status_code=503, headers={"Retry-After": RETRY_AFTER}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def db_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or refused database connection,
    rather than a mistake in a statement."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OperationalError | InterfaceError):
            return True  # SQLAlchemy's names for a connection that failed
        if isinstance(
            current,
            asyncpg.PostgresConnectionError
            | asyncpg.ConnectionDoesNotExistError
            | asyncpg.CannotConnectNowError
            | asyncpg.AdminShutdownError
            | asyncpg.TooManyConnectionsError,  # refused: the server is at max_connections
        ):
            return True
        if isinstance(current, OSError) and _raised_in_db_driver(current):
            return True  # refused, reset, timed out on the way to the database
        current = current.__cause__ or current.__context__
    return False


def _raised_in_db_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(DB_MODULES):
            return True
        tb = tb.tb_next
    return False


def install(app: FastAPI) -> None:
    """``/healthz``, the 503 while unhealthy, and 503 for a lost database connection."""
    if not hasattr(app.state, "healthy"):
        app.state.healthy = True  # the replica (its heartbeat) sets it False when fenced
    app.include_router(router)
    app.add_middleware(WhileUnhealthy)

    async def _database_failed(request: Request, exc: Exception) -> JSONResponse:
        if not db_unreachable(exc):
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return JSONResponse(
                {"detail": "An internal error occurred; the site's admins can find it in the log."},
                status_code=500,
            )
        log.warning(
            "%s %s: the database cannot be reached: %s",
            request.method,
            request.url.path,
            error_line(exc),
        )
        return JSONResponse(
            {"detail": UNREACHABLE}, status_code=503, headers={"Retry-After": RETRY_AFTER}
        )

    # Starlette's handler of Exception re-raises (the server logs a stack): these
    # classes are answered here instead
    for kind in (DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        app.add_exception_handler(kind, _database_failed)


def error_line(exc: BaseException) -> str:
    """An exception as one log line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
