"""The driver contract's rigs (tests/plugins/contract.py makes them): one system of a
kind, as the system under test of a real backend, and how a test reaches behind
the backend to the lab's process, job or pod.

Every lab is tests/fakelab.py; a rig finds a lab's process by its
``JUPYTERHUB_SERVICE_PREFIX``, which every kind hands on to the lab.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend import procs
from backend.settings import Settings
from tests.helpers import site
from tests.helpers.labs import SESSION_ARG, process_environment

SYSTEM = "sut"  # the system under test


def lab_pids(prefix: str) -> list[int]:
    """The live fakelab processes serving the lab at ``prefix``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if SESSION_ARG.encode() not in (entry / "cmdline").read_bytes():
                continue
            pid = int(entry.name)
            if procs.start_time(pid) is not None:
                if process_environment(pid).get("JUPYTERHUB_SERVICE_PREFIX") == prefix:
                    found.append(pid)
    return found


@dataclass
class Rig:
    """One kind's system under test, and how a test reaches behind the backend."""

    kind: str
    system: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    site_extra: dict[str, Any] = field(default_factory=dict)  # more of the site file
    crash: Callable[[], None] | None = None  # make the next lab crash (else FAKELAB_MODE)
    crash_output: bool = True  # a crashed lab's output reaches the person
    remains: Callable[[str], list[str]] = lambda lab_id: []

    def settings(self, tmp_path: Path) -> Settings:
        doc = site.doc(
            tmp_path / "state",
            f"sqlite+aiosqlite:///{tmp_path}/backend.sqlite",
            systems={SYSTEM: self.system},
            **self.site_extra,
        )
        return site.settings(doc, f"{self.kind} rig")

    def left_behind(self, lab_id: str, prefix: str) -> list[str]:
        """What of a lab is still there: its process, its job, its pod."""
        return [f"process {pid}" for pid in lab_pids(prefix)] + self.remains(lab_id)

    def kill(self, prefix: str) -> None:
        """End the lab from outside the backend, as a crash or the wall time would."""
        pids = lab_pids(prefix)
        assert pids, f"no process serves the lab at {prefix}"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
