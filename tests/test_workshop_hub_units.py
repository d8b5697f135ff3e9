"""Workshops in the hub, the pure parts: the create form's fields as the backend's
body, times as people read them, the spawner's start request of a workshop's lab."""

from __future__ import annotations

import pytest

from spawner.spawner import LablinkSpawner
from spawner.vo import verified_emails
from spawner.workshops import create_body, datetime_local, form_choices, names, utc_field, when
from tests.helpers.fakes import FakeHubUser

pytestmark = pytest.mark.workshop


def test_the_create_forms_fields_become_the_backends_body() -> None:
    form = {
        "id": " pandas-101 ",
        "title": "Pandas 101",
        "description": "line one\nline two",
        "start": "2026-12-04T09:00",
        "end": "2026-12-04T17:00",
        "max_participants": "30",
        "preset": "hpc|partition|devel",
        "image": "",
        "runtime": "60",
        "nodes": "",
        "reservation": " course ",
        "participants": "alice\nbob@example.org, carol",
        "tutors": "",
    }
    assert create_body(form) == {
        "id": "pandas-101",
        "title": "Pandas 101",
        "description": "line one\nline two",
        "start": "2026-12-04T09:00:00Z",
        "end": "2026-12-04T17:00:00Z",
        "system": "hpc",
        "options": {"partition": "devel", "runtime": 60, "reservation": "course"},
        "max_participants": 30,
        "participants": ["alice", "bob@example.org", "carol"],
    }


def test_a_systems_choice_without_partitions_and_an_image_of_another_system() -> None:
    body = create_body({"preset": "local", "image": "cloud|jupyter/scipy", "runtime": "ten"})
    assert body["system"] == "local"
    # the image of another system is not sent; a number that is not one goes to the
    # backend as typed, which refuses it with its sentence
    assert body["options"] == {"runtime": "ten"}
    assert body["max_participants"] == ""


def test_times_as_people_read_them() -> None:
    assert when("2026-12-04T09:05:00Z") == "09:05 UTC on 4 December 2026"
    assert when("2026-12-04T10:05:00+01:00") == "09:05 UTC on 4 December 2026"
    assert when(None) == ""
    assert datetime_local("2026-12-04T09:05:00Z") == "2026-12-04T09:05"
    assert utc_field("2026-12-04T09:05") == "2026-12-04T09:05:00Z"
    assert utc_field("2026-12-04T09:05:00Z") == "2026-12-04T09:05:00Z"
    assert names(" a, b\nc  ") == ["a", "b", "c"]


async def test_a_workshops_start_request_names_the_workshop_and_no_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawner = LablinkSpawner(user=FakeHubUser("alice"), backend_url="http://127.0.0.1:1")
    monkeypatch.setattr(spawner, "get_env", dict)  # JupyterHub's needs a running hub
    spawner.user_options = {"workshop": "pandas-101"}
    body = await spawner._request_body()
    assert body["workshop"] == "pandas-101"
    assert body["options"] == {} and body["vo"] is None
    spawner.user_options = {"system": "local"}
    assert "workshop" not in await spawner._request_body()


def test_the_create_form_offers_each_systems_partitions_flavors_and_images() -> None:
    limits = {
        "systems": [
            {"name": "local", "display_name": "This machine", "fields": []},
            {
                "name": "hpc",
                "display_name": "HPC",
                "fields": [
                    {"key": "partition", "choices": [{"value": "devel", "label": "Development"}]}
                ],
            },
            {
                "name": "cloud",
                "display_name": "Cloud",
                "fields": [
                    {"key": "flavor", "choices": [{"value": "small", "label": "Small (1 CPU)"}]},
                    {"key": "image", "choices": [{"value": "a:1", "label": "A"}]},
                ],
                "images": ["b:2"],  # the limits name some: only these
            },
        ]
    }
    presets, images = form_choices(limits)
    assert presets == [
        ("local", "This machine"),
        ("hpc|partition|devel", "HPC: Development"),
        ("cloud|flavor|small", "Cloud: Small (1 CPU)"),
    ]
    assert images == [("cloud|b:2", "Cloud: b:2")]


def test_only_an_email_address_the_provider_verified_reaches_the_backend() -> None:
    verified = {"oauth_user": {"email": "ada@uni.example", "email_verified": True}}
    assert verified_emails(verified) == ["ada@uni.example"]
    for claims in (
        {"email": "ada@uni.example"},  # the provider did not say
        {"email": "ada@uni.example", "email_verified": False},
        {"email": "ada@uni.example", "email_verified": "true"},  # not the JSON true
        {"email": "not an address", "email_verified": True},
    ):
        assert verified_emails({"oauth_user": claims}) == [], claims
    assert verified_emails({}) == []  # the demo login has no claims
