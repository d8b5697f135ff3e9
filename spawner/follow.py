"""One stream of a lab's events for every progress page that shows it.

JupyterHub calls ``Spawner.progress()`` once per open progress page (each
browser tab is an EventSource). Without sharing, 200 tabs of one person are
200 streams from the hub to the backend; with :class:`SharedFollow` they are
one: it reads the backend's stream while anybody reads it, keeps what came,
and every reader gets every event from the first, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

Event = dict[str, Any]
# the backend's events of one lab after a sequence number
Source = Callable[[int], AsyncIterator[Event]]


class SharedFollow:
    def __init__(self, lab_id: str, source: Source):
        self.lab_id = lab_id
        self._source = source
        self.events: list[Event] = []
        self.done = False  # the backend's stream ended (a final state)
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._readers = 0

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        after = int(self.events[-1]["seq"]) if self.events else 0
        try:
            async for event in self._source(after):
                self.events.append(event)
                self._wake()
            self.done = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the readers
            self.error = exc
        finally:
            self._task = None
            self._wake()

    async def read(self) -> AsyncIterator[Event]:
        """Every event of the lab, the ones that came before included."""
        self._readers += 1
        try:
            seen = 0
            while True:
                while seen < len(self.events):
                    seen += 1
                    yield self.events[seen - 1]
                if self.done:
                    return
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                if self._task is None:
                    self._task = asyncio.create_task(self._run(), name=f"follow-{self.lab_id}")
                await self._changed.wait()
        finally:
            self._readers -= 1
            if self._readers == 0 and self._task is not None:
                # nobody reads: stop reading the backend (a later reader resumes)
                task, self._task = self._task, None
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @property
    def readers(self) -> int:
        return self._readers
