"""The backend's client of the tunnel service (``POST/DELETE /api/v1/tunnels``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from .retry import Backoff

log = logging.getLogger("lablink.backend.tunnels")


class TunnelError(Exception):
    """No tunnel could be made; ``refused`` when the service said no (4xx)."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.message = message
        self.refused = refused


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


class TunnelClient:
    def __init__(self, http: httpx.AsyncClient, url: str, token: str, timeout: float = 40.0):
        self.http = http
        self.url = url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"TunnelClient({self.url})"  # the token stays out of logs

    def _detail(self, resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("detail", resp.reason_phrase))
        except ValueError:
            return resp.reason_phrase

    async def open(
        self,
        lab_id: str,
        system: str,
        host: str,
        port: int,
        *,
        retry_for: float,
        on_retry: Callable[[str], Awaitable[None]] | None = None,
    ) -> Endpoint:
        """A local endpoint forwarding to ``host:port``; retries 5xx and network errors
        with backoff for ``retry_for`` seconds (telling ``on_retry`` the first time),
        raises TunnelError."""
        body = {"lab_id": lab_id, "system": system, "host": host, "port": port}
        backoff = Backoff(retry_for)
        while True:
            try:
                resp = await self.http.post(
                    f"{self.url}/tunnels", json=body, headers=self._headers, timeout=self.timeout
                )
            except httpx.TransportError as exc:
                problem = f"the tunnel service cannot be reached ({type(exc).__name__})"
            else:
                if resp.status_code in (200, 201):
                    doc = resp.json()
                    return Endpoint(str(doc["local_host"]), int(doc["local_port"]))
                if 400 <= resp.status_code < 500:
                    raise TunnelError(self._detail(resp), refused=True)
                problem = self._detail(resp)
            if not backoff.remaining():
                raise TunnelError(problem)
            log.info("lab %s: no tunnel yet (%s); retrying", lab_id[:8], problem)
            if on_retry is not None:
                await on_retry(problem)
                on_retry = None
            await backoff.wait()

    async def close(self, lab_id: str) -> None:
        """Remove a lab's tunnel (idempotent); errors are logged, not raised."""
        try:
            resp = await self.http.delete(
                f"{self.url}/tunnels/{lab_id}", headers=self._headers, timeout=self.timeout
            )
            if resp.status_code not in (204, 404):
                log.warning("lab %s: tunnel not removed: %s", lab_id[:8], self._detail(resp))
        except httpx.TransportError as exc:
            log.warning("lab %s: tunnel service unreachable on removal: %s", lab_id[:8], exc)
