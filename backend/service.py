"""A service that so far only answers ``GET /api/v1/health`` (tunnel, userlab manager)."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from . import __version__
from .app import install_error_handlers
from .auth import Principal, TokenChecker, authenticate
from .settings import TokenSettings


def health_only_app(title: str, token: str) -> FastAPI:
    """Bearer-protected health endpoint; the real API arrives with the service's issue."""
    if len(token) < 16:
        raise ValueError("the service token must have at least 16 characters")
    app = FastAPI(title=title, version=__version__, openapi_url="/api/v1/openapi.json")
    service = TokenSettings(name="service", secret_env="SERVICE_TOKEN", role="admin")  # noqa: S106
    app.state.tokens = TokenChecker({token: service})
    install_error_handlers(app)

    @app.get("/api/v1/health")
    async def health(
        request: Request, who: Annotated[Principal, Depends(authenticate)]
    ) -> dict[str, object]:
        return {"status": "ok", "version": __version__, "pid": os.getpid()}

    return app
