"""The one-node Slurm cluster that .ci/peers.sh starts, and slurmrestd next to it:
where they are (the ``slurm`` and ``slurmrest`` fixtures find them) and the Slurm
commands the tests run on them."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backend.systems.slurm.client import SlurmClient
from backend.systems.slurm.tokens import mint
from tests.helpers.labs import fakelab_command

SLURM_DIR = Path(os.environ.get("LABLINK_SLURM_DIR", "/tmp/lablink-slurm"))
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: the accounts may run it (not the tests' venv)
ACCOUNTS = {"alice": "lablink-alice", "bob": "lablink-bob"}


@dataclass(frozen=True)
class SlurmCluster:
    """Where the cluster is: run Slurm commands with ``env`` (it sets SLURM_CONF)."""

    conf: str
    env: dict[str, str]


def squeue_ids(slurm: SlurmCluster) -> set[str]:
    """The ids of the jobs squeue knows now (pending, running, completing)."""
    result = subprocess.run(
        ["squeue", "--noheader", "--format=%i"],
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def block_the_node(slurm: SlurmCluster) -> str:
    """Submit a job that takes the whole node, so that the next job waits in the queue;
    return its id (end it with ``scancel``)."""
    out = subprocess.run(
        ["sbatch", "--parsable", "--exclusive", "--partition=batch", "--time=5",
         "--job-name=blocker", "--output=/dev/null", "--wrap", "sleep 300"],
        env=slurm.env, capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def scancel(slurm: SlurmCluster, job_id: str) -> None:
    subprocess.run(["scancel", job_id], env=slurm.env, check=False, timeout=10)


# -- slurmrestd: on 127.0.0.1:$LABLINK_SLURMRESTD_PORT (6820), JWT authentication with
# the cluster's key, jobs run as the Unix users lablink-alice and lablink-bob


@dataclass(frozen=True)
class SlurmRest:
    """Where slurmrestd answers, and the key that mints its tokens."""

    url: str
    key_file: Path

    def token(self, user: str, lifespan: int = 300) -> str:
        return mint(self.key_file.read_bytes(), user, lifespan)

    def client(self, http: httpx.AsyncClient, user: str, retry_for: float = 1.0) -> SlurmClient:
        return SlurmClient(http, self.url, user, self.token(user), retry_for=retry_for)

    def system(self, **overrides: Any) -> dict[str, Any]:
        """A ``kind: slurm`` system whose labs are tests/fakelab.py, run by the system's
        Python (the people's accounts cannot run the backend's)."""
        system: dict[str, Any] = {
            "kind": "slurm",
            "display_name": "Test cluster",
            "url": self.url,
            "auth": {"key_file": str(self.key_file)},
            "lab_command": fakelab_command(SYSTEM_PYTHON),
            "environment": {
                "LABLINK_LAB_HOST": "127.0.0.1",
                "LABLINK_LAB_BIND": "127.0.0.1",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
            },
            "lab_hosts": ["127.0.0.1"],
            "poll_interval": 0.2,
            "watch_interval": 0.3,
            "retry_for": 2,
            "start_timeout": 30,
            "stop_timeout": 15,
            "partitions": {
                "batch": {
                    "runtime": {"min": 1, "max": 60, "default": 10},
                    "gpus": {"min": 0, "max": 2},
                },
                "devel": {"runtime": {"min": 1, "max": 60, "default": 10}},
            },
            "access": [
                {"users": [person], "accounts": [account], "projects": ["p1"]}
                for person, account in ACCOUNTS.items()
            ],
        }
        system.update(overrides)
        return system
