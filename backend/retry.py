"""The one retry policy of Lablink's clients: exponential backoff with jitter,
bounded by a time budget.

Every client of a peer (UNICORE, slurmrestd, the tunnel service, the UserLab
Manager) retries what can be retried (network errors, 5xx, 429) the same way::

    backoff = Backoff(retry_for)
    while True:
        try:
            return await call()
        except Retryable as exc:
            if not await backoff.wait():
                raise Unavailable(...) from None
"""

from __future__ import annotations

import asyncio
import random
import time


class Backoff:
    """Waits of ``first`` seconds doubling up to ``most``, each jittered to 50-150 %,
    within ``budget`` seconds from the moment the object is made."""

    def __init__(self, budget: float, first: float = 0.2, most: float = 5.0):
        self.deadline = time.monotonic() + budget
        self.delay = first
        self.most = most
        self.attempts = 0

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def wait(self) -> bool:
        """Sleep before the next attempt and return True; return False at once when
        the budget is spent (the caller gives up)."""
        self.attempts += 1
        remaining = self.remaining()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, self.delay * (0.5 + random.random())))  # noqa: S311
        self.delay = min(self.delay * 2, self.most)
        return True
