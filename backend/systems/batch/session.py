"""What a batch kind implements: the batch system acting for one lab's owner
(:class:`JobSession`), the job as the driver sees it (:class:`JobView`), and the
two ways a request fails (pure interfaces, no I/O)."""

from __future__ import annotations

import abc
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ...states import LabState


class SiteUnavailable(Exception):
    """The batch system could not be reached (or kept failing) within the retry budget."""


class SiteRefused(Exception):
    """The batch system refused a request: ``status`` and its own ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class JobView:
    """A lab's job as the batch system shows it, in the driver's terms."""

    ref: str
    """what finds the job: its URL (UNICORE) or id (Slurm)"""
    state: LabState | None
    """the lab's state while the job is active (submitted, queued, starting); None: ended"""
    message: str = ""
    """while active: the sentence for the spawn page; once ended: why, in the system's words"""
    exit_code: int | None = None
    seen: tuple[Any, ...] = ()
    """what a person sees change (status, batch id, partition): a new event when it does"""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class JobSession(abc.ABC):
    """The batch system acting for one lab's owner. Every method raises
    SiteUnavailable or SiteRefused."""

    @abc.abstractmethod
    async def submit(self) -> str:
        """Submit the lab's job; its ref."""

    @abc.abstractmethod
    async def look(self, ref: str) -> JobView | None:
        """The job now; None when the system no longer knows it."""

    @abc.abstractmethod
    async def tagged(self) -> list[str]:
        """The refs of every job of this lab (by its tag), oldest first."""

    @abc.abstractmethod
    async def cancel(self, job: JobView) -> None:
        """Ask the system to end the job (idempotent: an ended job is fine)."""

    @abc.abstractmethod
    async def address(self, job: JobView) -> bytes | None:
        """What the start script wrote to ``lab.json`` (None: not yet)."""

    @abc.abstractmethod
    async def output(self, job: JobView) -> str:
        """The end of the job's output (``[stdout]``/``[stderr]``), '' if none."""

    def listing_key(self) -> Hashable | None:
        """Sessions with the same key see the same jobs in :meth:`look_all` (the system
        and the credential); None when the system lists no jobs with their state, so
        each running lab's job is looked at on its own."""
        return None

    async def look_all(self) -> dict[str, JobView]:
        """Every job this credential sees, by ref, in one request (only called when
        :meth:`listing_key` is not None). A job missing from it is looked at on its own
        before its lab counts as ended."""
        raise NotImplementedError
