"""A small async client for the parts of UNICORE/X's REST API that labs need.

Why not pyunicore's async client: its errors are plain ``httpx.HTTPError``
with the status only in the message text (the driver must tell "retry, the
site is down" from "the site refused this job"), its transport turns TLS
verification off by default, closing a resource closes the shared HTTP
client, and properties are cached for five seconds (the person would see
state changes late). This client uses one shared ``httpx.AsyncClient`` per
system, retries what can be retried within a time budget, and turns every
answer into data or one of two exceptions. pyunicore itself drives the
development site in the tests, which keeps both honest about the protocol.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ...bounded import IDENTITY, read_at_most
from ...retry import Backoff
from ..batch.session import SiteRefused, SiteUnavailable

log = logging.getLogger("lablink.backend.unicore")

RETRY_STATUS = frozenset({429, 502, 503, 504, 500})
# the most of a file the client reads when its caller gives no length
READ_LIMIT = 1024 * 1024


class UnicoreUnavailable(SiteUnavailable):
    """UNICORE could not be reached (or kept failing) within the retry budget."""


class UnicoreRefused(SiteRefused):
    """UNICORE answered 4xx: ``status`` and its ``errorMessage``."""


@dataclass(frozen=True)
class Credentials:
    """How one request authenticates: a bearer token or basic login (never logged).

    ``bearer_source`` gives the newest bearer token at each request (the person's,
    which the hub renews while the lab is followed); ``bearer`` is used when it has none.
    """

    bearer: str | None = None
    basic: tuple[str, str] | None = None
    bearer_source: Callable[[], str | None] | None = None

    def header(self) -> str:
        bearer = (self.bearer_source() if self.bearer_source else None) or self.bearer
        if bearer is not None:
            return f"Bearer {bearer}"
        if self.basic is not None:
            raw = f"{self.basic[0]}:{self.basic[1]}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        raise ValueError("no credentials")

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        bearer = self.bearer is not None or self.bearer_source is not None
        kind = "bearer" if bearer else "basic" if self.basic else "none"
        return f"Credentials({kind})"


def error_message(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return resp.reason_phrase or f"HTTP {resp.status_code}"
    if isinstance(doc, dict) and isinstance(doc.get("errorMessage"), str):
        return doc["errorMessage"][:200]
    return resp.reason_phrase or f"HTTP {resp.status_code}"


class UnicoreClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: Credentials,
        *,
        preferences: str | None = None,
        timeout: float = 20.0,
        retry_for: float = 60.0,
        origin: str | None = None,
    ):
        self.http = http
        self.credentials = credentials
        # where the person's token may go: the system's own scheme, host and port; a
        # Location or a link UNICORE sends elsewhere is refused, never followed
        self.origin = origin_of(origin) if origin else None
        self.preferences = preferences
        self.timeout = timeout
        self.retry_for = retry_for

    def _headers(self, accept: str, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": accept, "Authorization": self.credentials.header()}
        if self.preferences:
            headers["X-UNICORE-User-Preferences"] = self.preferences
        headers.update(extra or {})
        return headers

    async def request(
        self,
        method: str,
        url: str,
        *,
        accept: str = "application/json",
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 204, 206),
        missing_ok: bool = False,
        max_bytes: int | None = None,
    ) -> httpx.Response | None:
        """One call with retries on network errors and 5xx/429, within ``retry_for``.

        Returns None for 404 when ``missing_ok``; raises UnicoreRefused for other
        4xx and UnicoreUnavailable when the budget is spent. POST is retried too:
        a job created twice is found again by its tag and the extra one aborted.
        With ``max_bytes``, at most that many bytes of the body are read (what a
        job wrote is the job's to choose; the rest is left unread).
        """
        if self.origin is not None and origin_of(url) != self.origin:
            log.warning("refusing %s %s: not on the system's origin %s", method, url, self.origin)
            raise UnicoreRefused(
                0, f"UNICORE pointed to {origin_of(url)}, not to the system's own address"
            )
        backoff = Backoff(self.retry_for, first=0.5, most=10.0)
        while True:
            try:
                resp = await self._send(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=self._headers(accept, headers),
                    max_bytes=max_bytes,
                )
            except (httpx.TransportError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code in ok:
                    return resp
                if resp.status_code == 404 and missing_ok:
                    return None
                if resp.status_code not in RETRY_STATUS:
                    raise UnicoreRefused(resp.status_code, error_message(resp))
                problem = f"HTTP {resp.status_code}: {error_message(resp)}"
            if not backoff.remaining():
                log.warning(
                    "%s %s: giving up after %d attempts: %s",
                    method,
                    url,
                    backoff.attempts + 1,
                    problem,
                )
                raise UnicoreUnavailable(problem)
            log.info("%s %s: %s; retrying", method, url, problem)
            await backoff.wait()

    async def _send(
        self, method: str, url: str, *, headers: dict[str, str], max_bytes: int | None, **kw: Any
    ) -> httpx.Response:
        if max_bytes is None:
            return await self.http.request(method, url, headers=headers, timeout=self.timeout, **kw)
        request = self.http.build_request(
            method, url, headers={**headers, **IDENTITY}, timeout=self.timeout, **kw
        )
        async with asyncio.timeout(self.timeout):
            resp = await self.http.send(request, stream=True)
            try:
                body, _more = await read_at_most(resp, max_bytes)
            finally:
                await resp.aclose()
        return httpx.Response(resp.status_code, headers=resp.headers, content=body, request=request)

    async def get_json(self, url: str, **kw: Any) -> dict[str, Any] | None:
        resp = await self.request("GET", url, **kw)
        if resp is None:
            return None
        doc = resp.json()
        if not isinstance(doc, dict):
            raise UnicoreRefused(resp.status_code, "the answer is not a JSON object")
        return doc

    async def submit(self, jobs_url: str, description: dict[str, Any]) -> str:
        resp = await self.request("POST", jobs_url, json=description, ok=(201,))
        assert resp is not None
        location = resp.headers.get("location")
        if not location:
            raise UnicoreRefused(resp.status_code, "UNICORE created the job but sent no Location")
        return location

    async def job(self, job_url: str) -> dict[str, Any] | None:
        return await self.get_json(job_url, missing_ok=True)

    async def jobs_tagged(self, jobs_url: str, tag: str) -> list[str]:
        doc = await self.get_json(jobs_url, params={"tags": tag})
        jobs = (doc or {}).get("jobs", [])
        return [j for j in jobs if isinstance(j, str)]

    async def action(self, job: dict[str, Any], name: str) -> bool:
        """POST ``action:<name>`` of a job; False if the job has no such action."""
        href = link(job, f"action:{name}")
        if href is None:
            return False
        await self.request("POST", href, json={}, ok=(200, 204), missing_ok=True)
        return True

    async def read_file(
        self, storage_url: str, path: str, *, start: int | None = None, length: int | None = None
    ) -> bytes | None:
        """A file of a job's working directory (from byte ``start``, at most ``length``
        bytes, or ``length`` + 1 if the site ignored the range: the caller can tell a
        file that is too long); None if absent."""
        headers = None
        if start is not None or length is not None:
            first = start or 0
            last = str(first + length - 1) if length is not None else ""
            headers = {"Range": f"bytes={first}-{last}"}
        resp = await self.request(
            "GET",
            f"{storage_url.rstrip('/')}/files/{path}",
            accept="application/octet-stream",
            headers=headers,
            missing_ok=True,
            ok=(200, 206, 416),
            max_bytes=length + 1 if length is not None else READ_LIMIT,
        )
        if resp is None or resp.status_code == 416:
            return None if resp is None else b""
        return resp.content

    async def stat(self, storage_url: str, path: str) -> dict[str, Any] | None:
        return await self.get_json(f"{storage_url.rstrip('/')}/files/{path}", missing_ok=True)

    async def tail(self, storage_url: str, path: str, max_bytes: int = 16384) -> str:
        info = await self.stat(storage_url, path)
        if not info or info.get("isDirectory"):
            return ""
        size = int(info.get("size") or 0)
        if size == 0:
            return ""
        start = max(0, size - max_bytes)
        data = await self.read_file(storage_url, path, start=start, length=size - start)
        return (data or b"").decode("utf-8", "replace")


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL, the port spelled out, the host in lower case."""
    parts = httpx.URL(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)
    return f"{parts.scheme}://{parts.host.lower()}:{port}"


def link(doc: dict[str, Any], name: str) -> str | None:
    href = (doc.get("_links") or {}).get(name, {}).get("href")
    return href if isinstance(href, str) else None
