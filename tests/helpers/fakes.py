"""Fake drivers for the lab manager's own tests, as JupyterHub's tests/mocking.py has
fake spawners: each misbehaves in one way a real system can, and records what the
manager asked of it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from backend.states import LabState
from backend.systems.driver import Driver, LabContext, LabEnded, LabFailed, LabStatus

URL = "http://127.0.0.1:9"  # never dialled: fake labs answer nothing


class FakeDriver(Driver[Any]):
    """Starts at once and runs until stopped; counts what it was asked."""

    def __init__(self, http: httpx.AsyncClient | None = None):
        super().__init__(http)  # type: ignore[arg-type]
        self.calls: list[tuple[str, str]] = []
        self.ended = asyncio.Event()

    def called(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)

    async def start(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("start", ctx.lab_id))
        await ctx.save({"fake": True})
        await ctx.report(LabState.STARTING, "The fake lab starts.")
        return URL

    async def status(self, ctx: LabContext[Any]) -> LabStatus:
        return LabStatus(alive=not self.ended.is_set())

    async def wait_ended(self, ctx: LabContext[Any]) -> LabStatus:
        await self.ended.wait()
        return LabStatus(alive=False, exit_code=0, message="It was done.")

    async def stop(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("stop", ctx.lab_id))
        return "the fake lab's last words"

    async def recover(self, ctx: LabContext[Any]) -> str | None:
        self.calls.append(("recover", ctx.lab_id))
        return URL if ctx.handle.get("fake") else None


class NeverReady(FakeDriver):
    """Launches nothing and waits forever for a lab that never answers."""

    async def start(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("start", ctx.lab_id))
        await ctx.report(LabState.SUBMITTED, "Waiting for a lab that never comes.")
        await asyncio.Event().wait()
        raise AssertionError("not reached")


class Crashes(FakeDriver):
    """Breaks with an error no driver should let out."""

    async def start(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("start", ctx.lab_id))
        raise RuntimeError("the fake driver broke")


class SlowStop(FakeDriver):
    """Takes ``seconds`` to stop."""

    def __init__(self, seconds: float = 1.0):
        super().__init__()
        self.seconds = seconds

    async def stop(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("stop", ctx.lab_id))
        await asyncio.sleep(self.seconds)
        return ""


class EndedWhileDown(FakeDriver):
    """After a restart, its lab turns out to have ended meanwhile."""

    async def recover(self, ctx: LabContext[Any]) -> str | None:
        self.calls.append(("recover", ctx.lab_id))
        raise LabEnded("The fake lab ended while the backend was down.", "bye")


class LosesTrack(FakeDriver):
    """Runs, then breaks while the manager follows it (an error no driver should let
    out)."""

    async def wait_ended(self, ctx: LabContext[Any]) -> LabStatus:
        await asyncio.sleep(0.05)
        raise RuntimeError("the fake driver lost its lab")


class StopFails(FakeDriver):
    """Cannot end its lab the first ``times`` times it is asked (the system's API is
    down); then it can."""

    def __init__(self, times: int = 2):
        super().__init__()
        self.times = times

    async def stop(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("stop", ctx.lab_id))
        if self.called("stop") <= self.times:
            raise LabFailed("The fake system cannot be reached.")
        return "gone"


class PrintsNul(FakeDriver):
    """A lab whose last words hold NUL bytes, invalid UTF-8 and terminal escapes."""

    async def stop(self, ctx: LabContext[Any]) -> str:
        self.calls.append(("stop", ctx.lab_id))
        return b"bye\x00\x1b[31m red \xff\xfe end".decode("utf-8", "surrogateescape")


class FakeHubUser:
    """What the spawner needs of JupyterHub's user: a name, groups, an auth_state."""

    def __init__(self, name: str, token: str | None = None, admin: bool = False):
        self.name = name
        self.token = token
        self.admin = admin
        self.groups: list[Any] = []

    async def get_auth_state(self) -> dict[str, Any]:
        return {"access_token": self.token} if self.token else {}
