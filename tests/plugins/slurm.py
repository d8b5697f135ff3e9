"""Slurm: the one-node cluster that .ci/peers.sh starts (``slurm``), and slurmrestd,
Slurm's REST API, as .ci/peers.sh runs it next to the cluster (``slurmrest``): on
127.0.0.1:$LABLINK_SLURMRESTD_PORT (6820), JWT authentication with the cluster's
key, jobs run as the Unix users lablink-alice and lablink-bob.

A cluster or slurmrestd that does not answer fails the test in CI and skips it
elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers.peers import peer_missing
from tests.helpers.slurm import SLURM_DIR, SlurmCluster, SlurmRest


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    what = "Slurm (one-node cluster from .ci/peers.sh)"
    conf = SLURM_DIR / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    why = ""
    if not conf.is_file():
        why = f"no {conf} (run `make slurm-up`)"
    else:
        try:
            result = subprocess.run(
                ["sinfo", "--noheader", "--format=%T"],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"sinfo: {exc!r}"
        else:
            if result.returncode != 0 or not result.stdout.strip():
                why = f"sinfo exited {result.returncode}: {result.stderr.strip()[-300:]}"
    if why:
        peer_missing(what, why)
    return SlurmCluster(str(conf), env)


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
