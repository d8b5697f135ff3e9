"""The backend's UNICORE client against a scripted HTTP peer: retries, refusals, headers."""

from __future__ import annotations

import time

import httpx
import pytest

from backend.systems.unicore.client import (
    Credentials,
    UnicoreClient,
    UnicoreRefused,
    UnicoreUnavailable,
)

pytestmark = pytest.mark.unicore

JOBS = "https://gw.example.org/SITE/rest/core/jobs"


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """An HTTP client whose peer gives ``answers`` in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.AsyncClient(transport=httpx.MockTransport(handle)), seen


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"errorMessage": message, "status": status})


async def test_a_site_that_is_down_for_a_moment_is_retried() -> None:
    created = httpx.Response(201, headers={"Location": f"{JOBS}/j1"})
    http, seen = scripted(
        httpx.ConnectError("connection refused"), error(503, "maintenance"), created
    )
    uc = UnicoreClient(http, Credentials(bearer="tok"), retry_for=10)
    assert await uc.submit(JOBS, {"Executable": "bash"}) == f"{JOBS}/j1"
    assert len(seen) == 3


async def test_retries_end_when_the_budget_is_spent() -> None:
    http, seen = scripted(error(502, "bad gateway"))
    uc = UnicoreClient(http, Credentials(bearer="tok"), retry_for=1.0)
    began = time.monotonic()
    with pytest.raises(UnicoreUnavailable, match="502"):
        await uc.job(f"{JOBS}/j1")
    assert 0.9 < time.monotonic() - began < 3
    assert 2 <= len(seen) <= 6


async def test_a_refusal_is_not_retried_and_keeps_the_sites_sentence() -> None:
    http, seen = scripted(error(400, "Queue 'huge' does not exist"))
    uc = UnicoreClient(http, Credentials(bearer="tok"), retry_for=10)
    with pytest.raises(UnicoreRefused) as err:
        await uc.submit(JOBS, {})
    assert (err.value.status, err.value.message) == (400, "Queue 'huge' does not exist")
    assert len(seen) == 1


async def test_requests_carry_credentials_and_preferences() -> None:
    http, seen = scripted(httpx.Response(200, json={"status": "RUNNING"}))
    uc = UnicoreClient(http, Credentials(basic=("lablink", "pw")), preferences="uid:alice,group:p1")
    assert await uc.job(f"{JOBS}/j1") == {"status": "RUNNING"}
    headers = seen[0].headers
    assert headers["authorization"] == "Basic bGFibGluazpwdw=="
    assert headers["x-unicore-user-preferences"] == "uid:alice,group:p1"
    assert headers["accept"] == "application/json"
    assert "pw" not in repr(uc.credentials)


async def test_each_request_carries_the_newest_token() -> None:
    """The hub renews the person's token while a lab waits in the queue: the client takes
    the newest one at every request, the first one while there is no other."""
    http, seen = scripted(httpx.Response(200, json={"status": "QUEUED"}))
    newest: list[str | None] = [None]
    creds = Credentials(bearer="first", bearer_source=lambda: newest[0])
    uc = UnicoreClient(http, creds, retry_for=1)
    await uc.job(f"{JOBS}/j1")
    newest[0] = "renewed"
    await uc.job(f"{JOBS}/j1")
    assert [r.headers["authorization"] for r in seen] == ["Bearer first", "Bearer renewed"]
    assert "renewed" not in repr(creds) and repr(creds) == "Credentials(bearer)"


async def test_a_missing_job_is_none_and_a_tail_reads_the_end() -> None:
    content = b"".join(b"line %d\n" % i for i in range(1000))

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/j404"):
            return error(404, "no such job")
        if request.headers.get("accept") == "application/json":
            return httpx.Response(200, json={"isDirectory": False, "size": len(content)})
        first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
        end = int(last) + 1 if last else len(content)
        return httpx.Response(206, content=content[int(first) : end])

    uc = UnicoreClient(httpx.AsyncClient(transport=httpx.MockTransport(handle)), Credentials("t"))
    assert await uc.job(f"{JOBS}/j404") is None
    tail = await uc.tail("https://gw/SITE/rest/core/storages/j1-uspace", "stdout", max_bytes=64)
    assert tail.endswith("line 999\n") and len(tail) <= 64


async def test_the_persons_token_goes_only_to_the_systems_own_origin() -> None:
    """A Location or link that UNICORE (or whoever answers in its name) points
    elsewhere is refused, not followed: the bearer token never leaves the system."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(
            201, headers={"Location": "https://evil.example/SITE/rest/core/jobs/1"}
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    uc = UnicoreClient(http, Credentials("the-persons-token"), origin=JOBS)
    job_url = await uc.submit(JOBS, {"Executable": "true"})
    for call in (uc.job(job_url), uc.read_file("https://evil.example/s", "lab.json", length=9)):
        with pytest.raises(UnicoreRefused, match=r"evil\.example:443, not to the system.s own"):
            await call
    assert seen == [JOBS]
    # the same origin in another spelling is the system's own
    uc_default_port = UnicoreClient(
        http, Credentials("t"), origin="https://GW.example.org:443/SITE/rest/core"
    )
    assert uc_default_port.origin == UnicoreClient(http, Credentials("t"), origin=JOBS).origin
