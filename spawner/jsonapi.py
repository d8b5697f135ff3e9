"""The hub's own JSON APIs (workshops, the admin page's): JupyterHub's API handler
(a token, or the cookie with its XSRF check) answering JSON, with the backend's
refusals passed through as ``{"detail", "field"?}`` and a 5xx of the backend as 502."""

from __future__ import annotations

import json
from typing import Any

from jupyterhub.apihandlers import APIHandler
from tornado import web

from .client import BackendError


class JsonAPI(APIHandler):
    def answer(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def refuse(self, exc: BackendError) -> None:
        status = exc.status if exc.status < 500 else 502
        body = {"detail": exc.detail}
        if exc.field:
            body["field"] = exc.field
        self.answer(body, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        detail = ""
        if isinstance(exc, web.HTTPError):
            detail = str(exc.log_message or exc.reason or "")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"detail": detail or self._reason}))

    def body(self) -> dict[str, Any]:
        """The request's JSON object ({} for none); 400 with a sentence otherwise."""
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "The body must be a JSON object.") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "The body must be a JSON object.")
        return data
