"""slurmrestd, Slurm's REST API, as .ci/peers.sh runs it next to the one-node cluster:
on 127.0.0.1:$LABLINK_SLURMRESTD_PORT (6820), JWT authentication with the cluster's
key, jobs run as the Unix users lablink-alice and lablink-bob."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.systems.slurm.client import SlurmClient
from backend.systems.slurm.tokens import mint
from tests.helpers.labs import fakelab_command
from tests.helpers.peers import peer_missing

SLURM_DIR = Path(os.environ.get("LABLINK_SLURM_DIR", "/tmp/lablink-slurm"))
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: the accounts may run it (not the tests' venv)
ACCOUNTS = {"alice": "lablink-alice", "bob": "lablink-bob"}


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


@pytest.fixture(scope="session")
def slurmrest() -> SlurmRest:
    """slurmrestd and its key; fails in CI (skips elsewhere) when it does not answer."""
    url = f"http://127.0.0.1:{os.environ.get('LABLINK_SLURMRESTD_PORT', '6820')}"
    key_file = SLURM_DIR / "jwt_hs256.key"
    what = f"slurmrestd at {url} (from .ci/peers.sh)"
    if not key_file.is_file():
        peer_missing(what, f"no JWT key {key_file} (run `make slurm-up`)")
    rest = SlurmRest(url, key_file)
    headers = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": rest.token("root")}
    try:
        resp = httpx.get(f"{url}/slurm/v0.0.38/ping", headers=headers, timeout=30)
        pings = resp.json().get("pings") or []
    except (httpx.HTTPError, ValueError) as exc:
        peer_missing(what, repr(exc))
    if resp.status_code != 200 or not pings or pings[0].get("ping") != "UP":
        peer_missing(what, f"ping answered {resp.status_code}: {resp.text[:300]}")
    return rest


@pytest.fixture
async def slurm_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http
