"""A kind is one package and one registration: a toy kind registered from the test
tree (tests/toykind) through an entry point, as a site would register its own,
shows in the catalog, the form and the config reference, and its labs run.
Broken registrations are refused with a sentence."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.catalog import catalog, validate_options
from backend.settings import SettingsError
from backend.systems.base import OptionError
from backend.systems.registry import KindError, kinds
from spawner.form import options_form_html
from tests.helpers import site
from tests.helpers.api import BackendFactory, lab_request, wait_state

ROOT = Path(__file__).resolve().parent.parent


def register(where: Path, entry_points: str, name: str = "lablink-toy") -> None:
    """A distribution's metadata with these entry points, found on sys.path at ``where``."""
    info = where / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[lablink.systems]\n{entry_points}\n")


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    kinds.cache_clear()
    yield
    kinds.cache_clear()


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> Path:
    """The toy kind registered; the folder to put on PYTHONPATH for other processes."""
    where = tmp_path / "site-packages"
    register(where, "toy = tests.toykind:KIND")
    monkeypatch.syspath_prepend(str(where))
    return where


def toy_site(tmp_path: Path, database_url: str = "") -> dict[str, Any]:
    # a local system, as the toy kind is one with colours
    paint = site.local_system(kind="toy", display_name="Paint shop", colours=["red", "green"])
    return site.doc(
        tmp_path / "state",
        database_url or f"sqlite+aiosqlite:///{tmp_path}/b.sqlite",
        systems={"local": site.local_system(), "paint": paint},
    )


def test_a_toy_kind_shows_in_the_catalog_the_form_and_the_reference(
    toy: Path, tmp_path: Path
) -> None:
    assert "toy" in kinds()
    settings = site.settings(toy_site(tmp_path), "site.yaml")
    shown = catalog(settings, "alice")
    paint = next(s for s in shown["systems"] if s["name"] == "paint")
    assert paint["kind"] == "toy" and paint["colours"] == ["red", "green"]
    assert paint["fields"][0]["key"] == "colour"

    html = options_form_html(shown)
    assert 'name="paint.colour"' in html and '<option value="green">Green</option>' in html

    spec = importlib.util.spec_from_file_location("reference", ROOT / "docs/generate_reference.py")
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    text = reference.render()
    assert "### `systems.<name>` with `kind: toy`" in text
    assert "A lab is a process in a colour the person picks." in text
    assert "| `colours` | required | the colours a person may pick |" in text


def test_a_toy_kind_checks_its_options_and_the_site_file(toy: Path, tmp_path: Path) -> None:
    settings = site.settings(toy_site(tmp_path), "site.yaml")
    assert validate_options(settings, {"system": "paint"}, "alice") == (
        "paint",
        {"system": "paint", "colour": "red"},
    )
    with pytest.raises(OptionError, match=r"Colour: 'blue' is not offered .* Red or Green"):
        validate_options(settings, {"system": "paint", "colour": "blue"}, "alice")
    with pytest.raises(OptionError, match=r"'partition' is not an option of system "):
        validate_options(settings, {"system": "paint", "partition": "batch"}, "alice")
    doc = toy_site(tmp_path)
    del doc["systems"]["paint"]["colours"]
    with pytest.raises(SettingsError, match=r"systems.paint.colours: required but missing"):
        site.settings(doc, "site.yaml")


@pytest.mark.integration
async def test_a_toy_lab_runs_through_the_backend(
    toy: Path, tmp_path: Path, start_backend: BackendFactory
) -> None:
    settings = site.settings(toy_site(tmp_path), "site.yaml")
    backend = await start_backend(settings)
    async with backend.client() as hub:
        resp = await hub.post("/labs", json=lab_request(options={"system": "paint", "colour": "x"}))
        assert resp.status_code == 422 and resp.json()["field"] == "colour"
        resp = await hub.post(
            "/labs", json=lab_request(options={"system": "paint", "colour": "green"})
        )
        assert resp.status_code == 202, resp.text
        lab = await wait_state(hub, resp.json()["id"], {"running"})
        assert lab["options"] == {"system": "paint", "colour": "green"}
    async with backend.client(None, admin_token=True) as admin:
        handle = (await admin.get(f"/labs/{lab['id']}")).json()["handle"]
        environ = await asyncio.to_thread(Path(f"/proc/{handle['pid']}/environ").read_bytes)
        assert b"TOY_COLOUR=green" in environ.split(b"\0")
        await admin.delete(f"/labs/{lab['id']}")
        await wait_state(admin, lab["id"], {"stopped"})


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("toy = tests.toykind:ToySystem", "is not a SystemKind"),
        ("paint = tests.toykind:KIND", "names a kind 'toy': the names must be equal"),
        ("toy = tests.no_such_module:KIND", "cannot be loaded: No module named"),
    ],
)
def test_a_broken_registration_is_refused_with_a_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None, entry: str, words: str
) -> None:
    register(tmp_path, entry)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KindError, match=words):
        kinds()


def test_lablinks_own_kinds_are_registered() -> None:
    assert {"local", "unicore", "kubernetes"} <= set(kinds())
    assert os.path.isdir(ROOT / "backend" / "systems" / "batch")
