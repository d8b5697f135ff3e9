"""slurmrestd, Slurm's REST API, as .ci/peers.sh runs it next to the one-node cluster:
on 127.0.0.1:$LABLINK_SLURMRESTD_PORT (6820), JWT authentication with the cluster's
key, jobs run as the Unix users lablink-alice and lablink-bob."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers.peers import peer_missing
from tests.helpers.slurm import SLURM_DIR, SlurmRest


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
