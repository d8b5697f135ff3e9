"""The one-node Slurm cluster that .ci/peers.sh starts, and slurmrestd next to it:
where they are (the ``slurm`` and ``slurmrest`` fixtures find them) and the Slurm
commands the tests run on them."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from backend.systems.slurm.client import SlurmClient
from backend.systems.slurm.tokens import mint

SLURM_DIR = Path(os.environ.get("LABLINK_SLURM_DIR", "/tmp/lablink-slurm"))
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: the accounts may run it (not the tests' venv)
ACCOUNTS = {"alice": "lablink-alice", "bob": "lablink-bob"}  # person: the Unix user of the jobs


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
