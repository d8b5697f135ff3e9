"""Debugging a stuck lab: admins see its handle in the API, `lablink inspect` prints
the lab, its handle and its events from the database, and drivers log a debug
line per step."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from backend.cli import main as lablink
from backend.db import create_engine, migrate
from backend.settings import load_settings
from tests.helpers import site
from tests.helpers.api import BackendFactory, lab_request, wait_state

pytestmark = pytest.mark.integration


async def test_admins_see_a_labs_handle_and_inspect_prints_it(
    tmp_path: Path,
    start_backend: BackendFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = site.write(site.doc(tmp_path / "state"), tmp_path / "site.yaml")
    settings = load_settings(path)
    caplog.set_level(logging.DEBUG, logger="lablink.backend")
    backend = await start_backend(settings)
    async with backend.client() as hub:
        lab = (await hub.post("/labs", json=lab_request(server_name="s1"))).json()
        await wait_state(hub, lab["id"], {"running"})
        assert (await hub.get(f"/labs/{lab['id']}")).json()["handle"] is None
    async with backend.client(None, admin_token=True) as admin:
        handle = (await admin.get(f"/labs/{lab['id']}")).json()["handle"]
        assert handle["pid"] > 0 and handle["port"] > 1024 and handle["prefix"] == "/user/alice/s1/"
        listed = (await admin.get("/labs", params={"active": "true"})).json()
        assert listed[0]["handle"] == handle
    steps = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(f"lab {lab['id'][:8]}: started" in m for m in steps), steps
    assert any("the lab answers at http://127.0.0.1:" in m for m in steps), steps

    assert await asyncio.to_thread(lablink, ["inspect", "--site", str(path), lab["id"][:8]]) == 0
    text = capsys.readouterr().out
    assert f"lab      {lab['id']}" in text and "person   alice:s1" in text
    assert "system   local (local)" in text and "state    running (100%)" in text
    assert f"pid={handle['pid']}" in text and f"port={handle['port']}" in text
    assert "accepted   Lab accepted for system Test machine." in text

    assert (
        await asyncio.to_thread(lablink, ["inspect", "--site", str(path), "--json", lab["id"]]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["handle"] == handle and [e["state"] for e in doc["events"]][-1] == "running"

    async with backend.client(None, admin_token=True) as admin:
        await admin.delete(f"/labs/{lab['id']}")
        await wait_state(admin, lab["id"], {"stopped"})


@pytest.mark.parametrize(
    ("lab_id", "words"),
    [
        ("0000", "no lab's id starts with '0000'"),
        ("x;y", "is not a lab id"),
        ("nodb", "there is no database in"),
    ],
)
async def test_inspect_says_what_it_cannot_find(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lab_id: str, words: str
) -> None:
    path = site.write(site.doc(tmp_path / "state"), tmp_path / "site.yaml")
    if lab_id != "nodb":  # a database without labs
        (tmp_path / "state").mkdir()
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'backend.sqlite'}")
        await migrate(engine)
        await engine.dispose()
    code = await asyncio.to_thread(lablink, ["inspect", "--site", str(path), lab_id])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
