"""The frame every Lablink service shares: FastAPI with its OpenAPI under
``/api/v1``, bearer tokens, errors as one sentence (never a traceback), and
request bodies of at most 1 MiB.

The backend, the tunnel service and the UserLab Manager are built on it; it
imports nothing of the backend's labs, drivers or database.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .auth import TokenChecker
from .bounded import BodyLimit
from .settings import TokenSettings

log = logging.getLogger("lablink.service")


def validation_sentence(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """One sentence for the first thing wrong in a request (FastAPI gives a list)."""
    err = errors[0]
    kind = err.get("type", "")
    loc = [str(p) for p in err.get("loc", ())]
    if kind == "json_invalid":
        return 400, "The request body is not valid JSON."
    where, path = (loc[0], loc[1:]) if loc else ("body", [])
    field = ".".join(path)
    if where == "body" and not field:
        if kind == "missing":
            return 422, "The request needs a JSON body."
        return 422, "The request body must be a JSON object."
    label = {"query": "query parameter", "path": "path parameter", "header": "header"}.get(
        where, "field"
    )
    msg = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
    if kind == "missing":
        return 422, f"The {label} {field} is required."
    if kind == "extra_forbidden":
        return 422, f"The {label} {field} is not known here; remove it."
    return 422, f"The {label} {field} is not valid: {msg[0].lower() + msg[1:]}."


def install_error_handlers(app: FastAPI) -> None:
    """Errors are ``{"detail": "<one sentence>"}``; never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        status, detail = validation_sentence(errors)
        loc = [str(p) for p in errors[0].get("loc", ())] if errors else []
        if status == 422 and len(loc) > 1 and loc[0] == "body":
            # a field of the body: its key for programs (the hub marks it on the form)
            return JSONResponse({"detail": detail, "field": ".".join(loc[1:])}, status_code=422)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "The request was refused."
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is no {request.url.path} here."
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": "An internal error occurred; the site's admins can find it in the log."},
            status_code=500,
        )


def service_app(
    title: str, description: str, tokens: TokenChecker, lifespan: Any = None
) -> FastAPI:
    """The frame every Lablink service shares: its OpenAPI under /api/v1, the bearer
    tokens it accepts, and one-sentence errors."""
    app = FastAPI(
        title=title,
        version=__version__,
        description=description,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.tokens = tokens
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    return app


def backend_only_app(
    title: str, description: str, token: str, token_env: str, lifespan: Any
) -> FastAPI:
    """A service only the backend calls, with the one token in ``token_env``."""
    if len(token) < 16:
        raise ValueError("the service token must have at least 16 characters")
    backend = TokenSettings(name="backend", secret_env=token_env, role="admin")
    return service_app(title, description, TokenChecker({token: backend}), lifespan)
