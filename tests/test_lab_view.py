"""What the hub's pages get from the backend: a lab as a person's list shows it
(display names, when it began to run, when its wall time ends, a failure's last
output), the site's branding, a full VO's sentence, and Home's rows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.api import lab_view
from backend.catalog import quota_full
from backend.cli import EMBEDDED_SITE
from backend.embedded import embedded_site
from backend.settings import Settings, SettingsError
from backend.states import LabState
from backend.store import Lab, LabTimes, Usage
from backend.vos import VOSettings
from spawner.home import lab_rows, minutes_left
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state

HPC = {
    "kind": "unicore",
    "display_name": "Big Iron",
    "url": "https://unicore.example.org/X/rest/core",
    "partitions": {"batch": {"display_name": "Batch nodes", "runtime": {"max": 120}}},
    "access": [{"users": ["*"], "accounts": ["{user}"], "projects": ["p1"]}],
}
VOS = {"course": {"display_name": "HPC course", "members": {"users": ["*"]}}}


def a_lab(**kw: Any) -> Lab:
    now = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": "lab-1",
        "user_name": "alice",
        "server_name": "",
        "system": "hpc",
        "vo": "course",
        "options": {"system": "hpc", "partition": "batch", "runtime": 90},
        "state": LabState.RUNNING,
        "last_seq": 5,
        "url": "http://127.0.0.1:9000/",
        "handle": {},
        "message": "running",
        "created": now,
        "updated": now,
        **kw,
    }
    return Lab(**values)


def test_a_batch_lab_shows_display_names_and_when_its_wall_time_ends() -> None:
    settings = site.settings(site.doc(None, systems={"hpc": HPC}, vos=VOS))
    started = datetime(2026, 12, 4, 10, 5, tzinfo=UTC)
    out = lab_view(settings, a_lab(), LabTimes(started))
    assert out.system_display_name == "Big Iron"
    assert out.choice_display_name == "Batch nodes"
    assert out.vo_display_name == "HPC course"
    assert (out.started, out.runtime) == (started, 90)
    assert out.ends == started + timedelta(minutes=90)
    assert out.failure_detail == ""
    # not yet running: no end
    assert lab_view(settings, a_lab(state=LabState.QUEUED), LabTimes(None)).ends is None


def test_a_local_lab_has_no_wall_time() -> None:
    settings = site.settings(site.doc(None))
    lab = a_lab(system="local", vo=None, options={"system": "local"})
    out = lab_view(settings, lab, LabTimes(datetime.now(UTC)))
    assert out.choice_display_name is None and out.runtime is None and out.ends is None


async def test_the_list_of_labs_holds_times_names_and_a_failures_output(
    backend: RunningBackend,
) -> None:
    async with backend.client() as hub:
        ok = (await hub.post("/labs", json=lab_request(server_name="ok"))).json()
        crash = lab_request(server_name="bad", env={"FAKELAB_MODE": "crash"})
        bad = (await hub.post("/labs", json=crash)).json()
        await wait_state(hub, ok["id"], {"running"})
        await wait_state(hub, bad["id"], {"failed"})
        listed = {lab["server_name"]: lab for lab in (await hub.get("/labs")).json()}
        running, failed = listed["ok"], listed["bad"]
        assert running["system_display_name"] == "Test machine"
        started = datetime.fromisoformat(running["started"])
        assert timedelta(0) <= datetime.now(UTC) - started < timedelta(seconds=60)
        assert running["ends"] is None and running["failure_detail"] == ""
        assert failed["started"] is None
        assert "no module named 'jupyterlab'" in failed["failure_detail"]
        one = (await hub.get(f"/labs/{failed['id']}")).json()
        assert one["failure_detail"] == failed["failure_detail"]
        await hub.delete(f"/labs/{ok['id']}")
        await wait_state(hub, ok["id"], {"stopped"})
    # another person's list does not hold them
    async with backend.client("bob") as other:
        assert (await other.get("/labs")).json() == []
        assert (await other.get("/labs", params={"user": "alice"})).status_code == 403


async def test_the_site_endpoint_answers_the_branding(
    start_backend: BackendFactory, settings: Settings
) -> None:
    branded = site.settings(
        {
            **yaml.safe_load(yaml.safe_dump(settings.model_dump(mode="json"))),
            "branding": {"login_hint": "Use your campus account.", "logo": "/hub/static/x.png"},
        }
    )
    backend = await start_backend(branded)
    async with backend.client(None) as hub:  # before anyone has logged in: no user
        face = (await hub.get("/site")).json()
    assert face == {
        "name": "Lablink tests",  # site_name, as branding.name is unset
        "logo": "/hub/static/x.png",
        "login_hint": "Use your campus account.",
        "login_hint_url": "",
        "support_url": "",
    }


@pytest.mark.parametrize(
    ("branding", "key"),
    [
        ({"logo": "javascript:alert(1)"}, "branding.logo"),
        ({"logo": "//elsewhere.example.org/x.png"}, "branding.logo"),
        ({"support_url": "https://x.example.org/a b"}, "branding.support_url"),
        ({"login_hint_url": "mailto:help@example.org"}, "branding.login_hint_url"),
        ({"login_hint": "two\nlines"}, "branding.login_hint"),
        ({"colour": "red"}, "branding.colour"),
    ],
)
def test_a_bad_branding_names_its_key(branding: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        site.settings(site.doc(None, branding=branding))


def test_a_good_branding() -> None:
    face = {
        "name": "HPC Centre Labs",
        "logo": "https://www.example.org/logo.svg",
        "login_hint": "Log in with your centre account.",
        "login_hint_url": "https://www.example.org/accounts",
        "support_url": "mailto:support@example.org",
    }
    settings = site.settings(site.doc(None, branding=face))
    assert settings.branding.model_dump() == face


def test_a_full_vo_says_why_in_one_sentence() -> None:
    vo = VOSettings.model_validate({"quota": {"labs": 3, "labs_per_user": 2}})
    assert quota_full("Demo", vo, Usage(labs=1, user_labs=1)) is None
    assert "as many as it allows one person" in (quota_full("Demo", vo, Usage(2, 2)) or "")
    assert "all of its 3 labs in use" in (quota_full("Demo", vo, Usage(3, 0)) or "")
    assert quota_full("Open", VOSettings(), Usage(100, 100)) is None


def test_the_embedded_default_has_two_vos_for_everybody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABLINK_OIDC_ISSUER", raising=False)
    doc = embedded_site(Path(str(EMBEDDED_SITE)), 8040)
    settings = site.settings(doc)
    assert list(settings.vos) == ["demo", "hpc-course"]
    course = settings.vos["hpc-course"]
    assert course.systems == ["hpc"] and course.members.users == ["*"]
    assert (course.quota.labs_per_user or 0) < (settings.vos["demo"].quota.labs_per_user or 0)
    assert "password that lablink up printed" in settings.branding.login_hint
    # with OpenID Connect the demo's hint is not how people log in
    monkeypatch.setenv("LABLINK_OIDC_ISSUER", "https://login.example.org")
    assert "login_hint" not in embedded_site(Path(str(EMBEDDED_SITE)), 8040).get("branding", {})


def test_home_rows_follow_the_hubs_servers_and_the_newest_lab() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    labs = [
        {"server_name": "a", "state": "failed", "ends": None},
        {"server_name": "a", "state": "running", "ends": "2026-12-04T12:30:30+00:00"},
        {"server_name": "gone", "state": "stopped"},
        {"server_name": "", "state": "submitted"},
    ]
    rows = lab_rows({"": True, "a": True, "b": False, "c": True}, labs, now)
    assert [(r["name"], r["state"], r["active"]) for r in rows] == [
        ("", "queued", True),
        ("a", "running", True),
        ("b", "not started", False),
        ("c", "starting", True),  # the hub has begun; the backend has no lab yet
    ]
    assert rows[1]["minutes_left"] == 30
    assert minutes_left({"state": "stopped", "ends": "2026-12-04T12:30:00+00:00"}, now) is None
