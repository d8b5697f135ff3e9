"""The backend's client of the UserLab Manager (``/api/v1/labs``)."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ...retry import Backoff

log = logging.getLogger("lablink.backend.userlabs")


class UserlabError(Exception):
    """The manager refused (``refused``: 4xx, the message is its sentence) or could
    not be reached in time."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.message = message
        self.refused = refused


class UserlabClient:
    def __init__(self, http: httpx.AsyncClient, url: str, token: str):
        self.http = http
        self.url = url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return f"UserlabClient({self.url})"  # the token stays out of logs

    @staticmethod
    def _detail(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("detail", resp.reason_phrase))
        except ValueError:
            return resp.reason_phrase

    async def _request(
        self, method: str, path: str, retry_for: float, timeout: float = 20.0, **kwargs: Any
    ) -> httpx.Response:
        """Retry network errors and 5xx with backoff for ``retry_for`` seconds;
        answer any other response."""
        backoff = Backoff(retry_for)
        while True:
            try:
                resp = await self.http.request(
                    method, f"{self.url}{path}", headers=self._headers, timeout=timeout, **kwargs
                )
                if resp.status_code < 500:
                    return resp
                problem = self._detail(resp)
            except httpx.TransportError as exc:
                problem = f"the UserLab Manager cannot be reached ({type(exc).__name__})"
            if not backoff.remaining():
                raise UserlabError(problem)
            log.info("%s %s: %s; retrying", method, path, problem)
            await backoff.wait()

    async def create(self, body: dict[str, Any], retry_for: float) -> dict[str, Any]:
        resp = await self._request("POST", "/labs", retry_for, json=body)
        if resp.status_code in (200, 201):
            return resp.json()  # type: ignore[no-any-return]
        raise UserlabError(self._detail(resp), refused=True)

    async def get(
        self, lab_id: str, retry_for: float, wait: float = 0, seen: str = ""
    ) -> dict[str, Any] | None:
        """The lab as the manager sees it; None when it knows no such lab."""
        params = {"wait": wait, "seen": seen} if wait and seen else None
        resp = await self._request(
            "GET", f"/labs/{lab_id}", retry_for, timeout=wait + 20, params=params
        )
        if resp.status_code == 404:
            return None
        if resp.status_code == 200:
            return resp.json()  # type: ignore[no-any-return]
        raise UserlabError(self._detail(resp), refused=True)

    async def delete(self, lab_id: str, retry_for: float) -> str:
        """Delete the lab's pod; its last output lines (idempotent)."""
        resp = await self._request("DELETE", f"/labs/{lab_id}", retry_for)
        if resp.status_code == 204:
            return ""
        if resp.status_code == 200:
            return str(resp.json().get("output", ""))
        raise UserlabError(self._detail(resp), refused=True)
