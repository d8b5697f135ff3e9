"""The hub's progress pages of one lab share one stream from the backend
(spawner/follow.py): 200 tabs are one stream, every tab gets every event in order,
and the stream is dropped when the last tab closes and taken up again after the
last event seen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from spawner.follow import SharedFollow


class Backend:
    """A lab's events, as the backend's stream gives them; counts the streams."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.streams = 0
        self.open = 0
        self.asked_after: list[int] = []

    def add(self, state: str) -> None:
        self.events.append({"seq": len(self.events) + 1, "state": state, "progress": 0})
        self.changed.set()

    async def follow(self, after: int) -> AsyncIterator[dict[str, Any]]:
        self.streams += 1
        self.open += 1
        self.asked_after.append(after)
        try:
            seq = after
            while True:
                for event in self.events[seq:]:
                    seq = event["seq"]
                    yield event
                    if event["state"] in ("stopped", "failed"):
                        return
                self.changed.clear()
                await self.changed.wait()
        finally:
            self.open -= 1


async def read_until(follow: SharedFollow, state: str) -> list[int]:
    seen = []
    async for event in follow.read():
        seen.append(event["seq"])
        if event["state"] == state:
            break
    return seen


async def test_two_hundred_pages_are_one_stream_and_each_sees_every_event() -> None:
    backend = Backend()
    follow = SharedFollow("lab-1", backend.follow)
    backend.add("accepted")
    pages = [asyncio.create_task(read_until(follow, "running")) for _ in range(200)]
    await asyncio.sleep(0.05)
    for state in ("submitted", "queued", "starting", "running"):
        backend.add(state)
        await asyncio.sleep(0.01)
    seen = await asyncio.wait_for(asyncio.gather(*pages), 5)
    assert all(s == [1, 2, 3, 4, 5] for s in seen)
    assert backend.streams == 1
    # a page opened later gets the events from the first
    assert await asyncio.wait_for(read_until(follow, "running"), 5) == [1, 2, 3, 4, 5]


async def test_the_stream_closes_with_the_last_page_and_resumes_after_the_last_event() -> None:
    backend = Backend()
    follow = SharedFollow("lab-1", backend.follow)
    backend.add("accepted")
    backend.add("queued")
    assert await asyncio.wait_for(read_until(follow, "queued"), 5) == [1, 2]
    await asyncio.sleep(0.05)
    assert backend.open == 0 and follow.readers == 0  # nobody watches: no stream
    backend.add("running")
    assert await asyncio.wait_for(read_until(follow, "running"), 5) == [1, 2, 3]
    assert backend.asked_after == [0, 2]


async def test_a_broken_stream_reaches_the_pages_and_the_next_page_tries_again() -> None:
    calls = 0

    async def broken(after: int) -> AsyncIterator[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the backend said no")
        yield {"seq": after + 1, "state": "running", "progress": 100}

    follow = SharedFollow("lab-1", broken)
    try:
        await asyncio.wait_for(read_until(follow, "running"), 5)
    except RuntimeError as exc:
        assert "said no" in str(exc)
    else:
        raise AssertionError("the error did not reach the page")
    assert await asyncio.wait_for(read_until(follow, "running"), 5) == [1]
