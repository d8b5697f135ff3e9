"""The hub waits for a lab as long as its system's own limits allow: the spawner's
start_timeout follows the catalog's start_limit of the chosen system, so a lab
queued longer than JupyterHub's default is not ended by JupyterHub's generic
timeout before the backend's own sentence."""

from __future__ import annotations

from typing import Any

import pytest

from backend.settings import Settings
from spawner.spawner import LablinkSpawner, _backend_decides
from tests.helpers import site
from tests.helpers.fakes import FakeHubUser

pytestmark = pytest.mark.integration


async def test_the_start_timeout_is_the_systems_limit_and_a_margin(
    backend: Any, settings: Settings
) -> None:
    spawner = LablinkSpawner(
        user=FakeHubUser("alice"),
        backend_url=backend.url,
        backend_token=backend.tokens["hub"],
    )
    assert spawner.start_timeout == 60  # JupyterHub's default, until a system is chosen
    limit = settings.systems["local"].start_limit()
    await _backend_decides(spawner, {"system": "local"})
    assert spawner.start_timeout == int(limit + spawner.start_timeout_margin)
    spawner.start_timeout = 60
    await _backend_decides(spawner, {})  # the site's default system
    assert spawner.start_timeout == int(limit + spawner.start_timeout_margin)
    spawner.start_timeout = 60
    await _backend_decides(spawner, {"system": "nowhere"})  # the backend refuses it later
    assert spawner.start_timeout == 60


def test_a_batch_systems_limit_covers_its_queue_and_start() -> None:
    hpc = {
        "kind": "unicore",
        "url": "https://u.example.org/X/rest/core",
        "queue_timeout": 7200,
        "start_timeout": 300,
        "retry_for": 60,
        "partitions": {"batch": {}},
    }
    doc = site.doc(None, systems={"hpc": hpc}, tokens=site.hub_token("T"))
    limit = site.settings(doc).systems["hpc"].start_limit()
    assert limit == 7200 + 300 + 2 * 60 + 60
