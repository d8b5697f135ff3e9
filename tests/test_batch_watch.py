"""Running labs of one system and credential share one job listing per interval
(backend/systems/batch/watch.py): a thousand labs cost one request per interval, a
job missing from the listing is asked about on its own, a failed listing falls back
to each lab's own status, and a lab that stops being followed leaves the watch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from backend.states import LabState
from backend.systems.batch.session import JobSession, JobView, SiteUnavailable
from backend.systems.batch.watch import SharedWatch
from backend.systems.driver import LabContext, LabStatus

INTERVAL = 0.05


class Site:
    """A batch system's jobs (ref -> state; None: ended) and what was asked of it."""

    def __init__(self) -> None:
        self.jobs: dict[str, LabState | None] = {}
        self.listings = 0
        self.single_looks: list[str] = []
        self.down = False


class Session(JobSession):
    def __init__(self, site: Site):
        self.site = site

    async def submit(self) -> str:
        raise AssertionError("not submitted here")

    async def look(self, ref: str) -> JobView | None:
        self.site.single_looks.append(ref)
        if ref not in self.site.jobs:
            return None
        return JobView(ref, self.site.jobs[ref], "ended" if self.site.jobs[ref] is None else "")

    async def tagged(self) -> list[str]:
        return []

    async def cancel(self, job: JobView) -> None:
        return None

    async def address(self, job: JobView) -> bytes | None:
        return None

    async def output(self, job: JobView) -> str:
        return ""

    def listing_key(self) -> str:
        return "site:alice"

    async def look_all(self) -> dict[str, JobView]:
        self.site.listings += 1
        if self.site.down:
            raise SiteUnavailable("down")
        return {
            ref: JobView(ref, state, "it ended" if state is None else "", exit_code=7)
            for ref, state in self.site.jobs.items()
        }


def context(n: int) -> LabContext[Any]:
    async def report(*args: Any, **kwargs: Any) -> None:
        return None

    async def save(handle: dict[str, Any]) -> None:
        return None

    return LabContext(
        lab_id=f"lab{n}",
        user_name="alice",
        server_name=str(n),
        system_name="hpc",
        system=None,  # type: ignore[arg-type]  # the watch does not read it
        options={},
        handle={"job": f"job{n}"},
        state_dir=Path("/nonexistent"),
        report=report,
        save_handle=save,
    )


def watch_of(site: Site) -> SharedWatch:
    session = Session(site)

    async def status(ctx: LabContext[Any]) -> LabStatus:
        job = await session.look(str(ctx.handle["job"]))
        if job is None:
            return LabStatus(alive=False, message="The job is gone.")
        return LabStatus(alive=job.state is not None)

    return SharedWatch("site:alice", INTERVAL, lambda ctx: session, status)


async def test_many_labs_share_one_listing_and_an_ended_job_is_told() -> None:
    site = Site()
    site.jobs = {f"job{n}": LabState.STARTING for n in range(200)}
    watch = watch_of(site)
    waits = {n: asyncio.create_task(watch.wait(context(n))) for n in range(200)}
    await asyncio.sleep(INTERVAL * 4.5)
    assert not any(w.done() for w in waits.values())
    assert 3 <= site.listings <= 5  # one per interval for all 200 labs
    assert site.single_looks == []
    site.jobs["job7"] = None
    status = await asyncio.wait_for(waits[7], 2)
    assert status == LabStatus(alive=False, exit_code=7, message="it ended")
    assert not any(w.done() for n, w in waits.items() if n != 7)
    for w in waits.values():
        w.cancel()
    await asyncio.gather(*waits.values(), return_exceptions=True)
    await asyncio.sleep(INTERVAL * 2)
    assert not watch.active  # nobody left to follow: the watch ends


async def test_a_job_missing_from_the_listing_is_asked_about_on_its_own() -> None:
    site = Site()
    site.jobs = {"job1": LabState.STARTING, "job2": LabState.STARTING}
    watch = watch_of(site)
    one = asyncio.create_task(watch.wait(context(1)))
    two = asyncio.create_task(watch.wait(context(2)))
    await asyncio.sleep(INTERVAL * 2)
    del site.jobs["job2"]
    status = await asyncio.wait_for(two, 2)
    assert status.alive is False and status.message == "The job is gone."
    assert site.single_looks and set(site.single_looks) == {"job2"}
    assert not one.done()
    one.cancel()


async def test_a_failed_listing_falls_back_to_each_labs_own_status() -> None:
    site = Site()
    site.jobs = {"job1": LabState.STARTING, "job2": LabState.STARTING}
    site.down = True
    watch = watch_of(site)
    one = asyncio.create_task(watch.wait(context(1)))
    two = asyncio.create_task(watch.wait(context(2)))
    await asyncio.sleep(INTERVAL * 2.5)
    assert {"job1", "job2"} <= set(site.single_looks)
    site.jobs["job1"] = None
    status = await asyncio.wait_for(one, 2)
    assert status.alive is False
    assert not two.done()
    two.cancel()
