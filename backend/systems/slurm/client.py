"""A small async client for the parts of slurmrestd's API (v0.0.38) labs need.

Every request names the user it acts for (``X-SLURM-USER-NAME``) and carries
that user's token (``X-SLURM-USER-TOKEN``). slurmrestd's status codes say
little (found with Slurm 22.05, see docs/explanation.md, "slurmrestd"):

- 200 with an empty ``errors`` list: done (a cancel of an ended job too);
- 401: no user or no token;
- 400: a body it cannot parse (malformed JSON, an unknown key);
- 500 with ``errors[]``: everything else. ``error_number`` 2017 (an unknown job
  id) on a job's GET means the job is gone; a positive code (2000 invalid
  partition, 2051 invalid time limit, ...) is a refusal with the ``error``
  text; -1 "Unspecified error" comes both from a token slurmctld does not take
  and from slurmctld not answering (after its MessageTimeout), so it is
  retried like a network error.

Network errors, 502-504 and -1 are retried with the one backoff policy within
``retry_for`` seconds, then :class:`SlurmUnavailable`; refusals raise
:class:`SlurmRefused` at once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from ...retry import Backoff
from ..batch.session import SiteRefused, SiteUnavailable

log = logging.getLogger("lablink.backend.slurm")

INVALID_JOB_ID = 2017
RETRY_STATUS = frozenset({429, 502, 503, 504})


class SlurmUnavailable(SiteUnavailable):
    """slurmrestd (or slurmctld behind it) could not be reached within the retry budget."""


class SlurmRefused(SiteRefused):
    """slurmrestd refused: ``status``, Slurm's ``error`` text and its ``number``."""

    def __init__(self, status: int, message: str, number: int = 0):
        super().__init__(status, message)
        self.number = number


def first_error(doc: Any) -> tuple[int, str]:
    """The first of ``errors[]``: (error number, one line of text); (0, "") if none."""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not errors or not isinstance(errors, list) or not isinstance(errors[0], dict):
        return 0, ""
    err = errors[0]
    number = err.get("error_number", err.get("error_code", 0))
    text = str(err.get("error") or err.get("description") or "").strip()
    detail = str(err.get("description") or "").strip()
    if detail and detail != text:
        text = f"{text} ({detail})"
    return int(number) if isinstance(number, int) else 0, " ".join(text.split())[:200]


class SlurmClient:
    """slurmrestd acting for one user; one shared ``httpx.AsyncClient`` underneath."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        user: str,
        token: str,
        *,
        api_version: str = "v0.0.38",
        timeout: float = 30.0,
        retry_for: float = 60.0,
    ):
        self.http = http
        self.base = f"{url.rstrip('/')}/slurm/{api_version}"
        self.user = user
        self._headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
        self.timeout = timeout
        self.retry_for = retry_for

    def __repr__(self) -> str:
        return f"SlurmClient({self.base}, user={self.user})"  # the token stays out

    async def request(
        self, method: str, path: str, *, body: Any = None, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """The answer's JSON; None for an unknown job when ``missing_ok``."""
        backoff = Backoff(self.retry_for, first=0.5, most=10.0)
        url = f"{self.base}{path}"
        while True:
            try:
                resp = await self.http.request(
                    method,
                    url,
                    content=None if body is None else json.dumps(body),
                    headers={**self._headers, "Content-Type": "application/json"},
                    timeout=self.timeout,
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                try:
                    doc: Any = resp.json()
                except ValueError:
                    doc = None
                number, text = first_error(doc)
                if resp.status_code == 200 and number == 0 and isinstance(doc, dict):
                    return doc  # type: ignore[no-any-return]
                if number == INVALID_JOB_ID and missing_ok:
                    return None
                if resp.status_code in (400, 401, 403, 404):
                    raise SlurmRefused(resp.status_code, text or resp.text.strip()[:200], number)
                if resp.status_code == 500 and number > 0:
                    raise SlurmRefused(resp.status_code, text, number)
                if resp.status_code not in (500, *RETRY_STATUS):
                    raise SlurmRefused(resp.status_code, text or f"HTTP {resp.status_code}", number)
                problem = f"HTTP {resp.status_code}: {text or 'no error given'}"
            if not backoff.remaining():
                log.warning(
                    "%s %s: giving up after %d attempts: %s",
                    method,
                    url,
                    backoff.attempts + 1,
                    problem,
                )
                raise SlurmUnavailable(problem)
            log.info("%s %s: %s; retrying", method, url, problem)
            await backoff.wait()

    async def submit(self, script: str, job: dict[str, Any]) -> str:
        """Submit a batch job; its id."""
        doc = await self.request("POST", "/job/submit", body={"script": script, "job": job})
        job_id = (doc or {}).get("job_id")
        if not isinstance(job_id, int):
            raise SlurmRefused(500, "slurmrestd accepted the job but sent no job id")
        return str(job_id)

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """The job as slurmctld knows it; None when it no longer does."""
        doc = await self.request("GET", f"/job/{job_id}", missing_ok=True)
        jobs = (doc or {}).get("jobs") or []
        return jobs[0] if jobs and isinstance(jobs[0], dict) else None

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld knows (pending, running, and recently ended)."""
        doc = await self.request("GET", "/jobs")
        return [j for j in (doc or {}).get("jobs") or [] if isinstance(j, dict)]

    async def cancel(self, job_id: str) -> None:
        """Cancel a job (idempotent: an ended or unknown job is fine)."""
        await self.request("DELETE", f"/job/{job_id}", missing_ok=True)
