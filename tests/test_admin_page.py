"""The admin page's pieces that need no hub (issue 18): a lab's handle in the words of
its kind, its age, its VO or workshop, a quota's fill; and the demo login's password
for the hub's admins. The page itself runs in tests/test_browser_admin.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spawner.admin import admin_rows, age, handle_parts, percent
from spawner.auth import DemoAuthenticator

pytestmark = pytest.mark.metrics

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("handle", "shown"),
    [
        (
            {"pid": 4242, "started": 1.5, "port": 8123, "prefix": "/user/a/", "log": "/x"},
            [("pid", "4242"), ("port", "8123")],
        ),
        (  # UNICORE: the job's URL, the node, the tunnel's port
            {
                "tag": "t",
                "job": "https://unicore.example.org/SITE/rest/core/jobs/8f2c-11",
                "host": "node17",
                "port": 40123,
                "local_host": "127.0.0.1",
                "local_port": 9001,
            },
            [("job", "8f2c-11"), ("node", "node17:40123"), ("tunnel port", "9001")],
        ),
        (  # Slurm: the job's id
            {"job": "1234", "host": "c042", "port": 41000, "local_port": 9002},
            [("job", "1234"), ("node", "c042:41000"), ("tunnel port", "9002")],
        ),
        (
            {"prefix": "/user/a/", "namespace": "labs", "pod": "lab-59a1", "url": "http://x"},
            [("pod", "labs/lab-59a1")],
        ),
        ({"job": "77"}, [("job", "77")]),  # queued: no node yet
        ({}, []),
        (None, []),
    ],
)
def test_a_handle_in_the_words_of_its_kind(
    handle: dict[str, object] | None, shown: list[tuple[str, str]]
) -> None:
    assert handle_parts(handle) == shown


@pytest.mark.parametrize(
    ("created", "shown"),
    [
        ("2026-12-04T11:59:30Z", "0 min"),
        ("2026-12-04T11:55:00+00:00", "5 min"),
        ("2026-12-04T09:45:00Z", "2 h 15 min"),
        ("2026-12-01T08:00:00Z", "3 d 4 h"),
        ("2026-12-04T12:05:00Z", "0 min"),  # a clock a little ahead
        ("yesterday", ""),
    ],
)
def test_the_age_of_a_lab(created: str, shown: str) -> None:
    assert age(created, NOW) == shown


def test_each_row_names_its_vo_or_its_workshop() -> None:
    labs = [
        {"id": "1", "state": "accepted", "vo": "demo", "vo_display_name": "Demo", "workshop": None},
        {
            "id": "2",
            "state": "running",
            "vo": None,
            "vo_display_name": "Python 101",
            "workshop": "python-101",
        },
        {"id": "3", "state": "stop_failed", "vo": None, "workshop": None},
    ]
    rows = admin_rows(labs, NOW)
    assert [(r["group"], r["group_name"], r["state"]) for r in rows] == [
        ("vo:demo", "Demo", "queued"),
        ("workshop:python-101", "Python 101", "running"),
        ("", "", "stopping"),
    ]


def test_how_full_a_quota_is() -> None:
    assert percent(3, 12) == 25
    assert percent(13, 12) == 100
    assert percent(0, 0) == 100  # a limit of none admits nothing
    assert percent(5, None) == 0


def test_the_demo_logins_admins_have_a_password_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABLINK_DEMO_PASSWORD", "the-people's-password")
    monkeypatch.setenv("LABLINK_DEMO_ADMIN_PASSWORD", "the-admins-own-password-of-32-chars!")
    auth = DemoAuthenticator(admin_users={"ada"})
    assert auth.user_password == "the-people's-password"
    assert auth.admin_password == "the-admins-own-password-of-32-chars!"
    monkeypatch.delenv("LABLINK_DEMO_ADMIN_PASSWORD")
    assert DemoAuthenticator().admin_password is None
