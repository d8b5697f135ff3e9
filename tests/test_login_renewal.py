"""The hub keeps a person's access token valid while their labs are active
(spawner/refresh.py), with a fake authenticator and a fake hub user; the lab's
sentence goes to the real backend. tests/test_oidc.py does the same end to end
against a real OIDC provider and UNICORE development site."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator

from spawner.refresh import check_interval, lost_login_sentence, renew_login
from spawner.spawner import LablinkSpawner
from tests.helpers.api import RunningBackend, lab_request, stop_and_wait, wait_state

log = logging.getLogger("tests.login_renewal")


def tokens(access: str, lives: float) -> dict[str, Any]:
    return {"access_token": access, "refresh_token": "r", "expires_at": time.time() + lives}


class FakeUser:
    """What the renewal needs of JupyterHub's user: auth_state, groups, admin."""

    def __init__(self, name: str, auth_state: dict[str, Any] | None):
        self.name = name
        self.admin = False
        self.groups: list[Any] = []
        self.auth_state = auth_state
        self.synced: list[list[str]] = []

    async def get_auth_state(self) -> dict[str, Any] | None:
        return dict(self.auth_state) if self.auth_state is not None else None

    async def save_auth_state(self, auth_state: dict[str, Any] | None) -> None:
        self.auth_state = auth_state

    def sync_groups(self, names: list[str]) -> None:
        self.synced.append(sorted(names))


class FakeAuthenticator:
    """Answers refresh_user with ``answer`` (an auth model, True, False, or an exception
    to raise) after ``delay`` seconds, and counts the calls."""

    login_service = "Test AAI"
    manage_groups = True
    manage_roles = False
    enable_auth_state = True
    reconcile_auth_state_hook = None

    def __init__(self, answer: Any, margin: float = 60, delay: float = 0):
        self.answer = answer
        self.refresh_margin = margin
        self.delay = delay
        self.calls = 0

    async def refresh_user(self, user: Any, handler: Any = None) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def renewed(name: str, access: str = "new") -> dict[str, Any]:
    return {"name": name, "auth_state": tokens(access, 3600), "groups": ["ws2026"]}


async def test_a_token_far_from_its_end_is_left_alone() -> None:
    user = FakeUser("r-far", tokens("old", 3600))
    auth = FakeAuthenticator(renewed("r-far"))
    renewal = await renew_login(user, auth, 300, log)
    assert renewal is not None and not renewal.renewed and renewal.failure is None
    assert renewal.auth_state["access_token"] == "old" and auth.calls == 0


async def test_a_login_without_tokens_is_left_alone() -> None:
    user = FakeUser("r-demo", None)
    assert await renew_login(user, SharedPasswordAuthenticator(), 300, log) is None
    assert await renew_login(user, None, 300, log) is None


async def test_a_token_about_to_expire_is_renewed_and_saved_as_the_hub_does() -> None:
    user = FakeUser("r-due", tokens("old", 30))
    auth = FakeAuthenticator(renewed("r-due"))
    renewal = await renew_login(user, auth, 300, log)
    assert renewal is not None and renewal.renewed and renewal.failure is None
    assert renewal.auth_state["access_token"] == "new"
    assert user.auth_state is not None and user.auth_state["access_token"] == "new"
    assert user.synced == [["ws2026"]]  # the authenticator manages the groups
    assert isinstance(getattr(user, "_auth_refreshed", None), float)


async def test_the_servers_of_one_person_share_one_renewal() -> None:
    user = FakeUser("r-shared", tokens("old", 30))
    auth = FakeAuthenticator(renewed("r-shared"), delay=0.1)
    first, second = await asyncio.gather(*(renew_login(user, auth, 300, log) for _ in "ab"))
    assert auth.calls == 1
    assert first is not None and second is not None
    assert first.auth_state["access_token"] == second.auth_state["access_token"] == "new"


@pytest.mark.parametrize(
    "answer", [False, RuntimeError("the provider broke")], ids=["refused", "broke"]
)
async def test_a_failed_renewal_is_tried_again_only_after_a_while(answer: Any) -> None:
    name = f"r-fails-{type(answer).__name__}"
    user = FakeUser(name, tokens("old", 30))
    auth = FakeAuthenticator(answer)
    failed = await renew_login(user, auth, 0.3, log)
    assert failed is not None and failed.failure is not None and auth.calls == 1
    failed.failure.told.add("lab-1")
    for _ in range(5):  # polls meanwhile: the provider is not asked
        again = await renew_login(user, auth, 0.3, log)
        assert again is not None and again.failure is failed.failure
    assert auth.calls == 1
    await asyncio.sleep(0.35)
    later = await renew_login(user, auth, 0.3, log)
    assert auth.calls == 2
    # the same failure goes on: a lab told of it is not told again
    assert later is not None and later.failure is failed.failure
    assert later.failure.told == {"lab-1"}


async def test_a_new_login_ends_a_failure() -> None:
    user = FakeUser("r-again", tokens("old", 30))
    auth = FakeAuthenticator(False)
    failed = await renew_login(user, auth, 300, log)
    assert failed is not None and failed.failure is not None
    user.auth_state = tokens("from-a-new-login", 3600)
    fresh = await renew_login(user, auth, 300, log)
    assert fresh is not None and fresh.failure is None and not fresh.renewed
    user.auth_state = tokens("from-a-new-login", 30)  # due again: asked at once
    auth.answer = renewed("r-again", "renewed")
    renewal = await renew_login(user, auth, 300, log)
    assert renewal is not None and renewal.renewed and auth.calls == 2


async def test_nothing_new_is_no_failure_and_not_asked_at_every_poll() -> None:
    user = FakeUser("r-same", tokens("old", 30))
    auth = FakeAuthenticator(True)
    for _ in range(3):
        renewal = await renew_login(user, auth, 300, log)
        assert renewal is not None and renewal.failure is None and not renewal.renewed
    assert auth.calls == 1


async def test_a_login_renewed_as_somebody_else_is_a_failure() -> None:
    user = FakeUser("r-name", tokens("old", 30))
    auth = FakeAuthenticator(renewed("mallory"))
    renewal = await renew_login(user, auth, 300, log)
    assert renewal is not None and renewal.failure is not None
    assert user.auth_state is not None and user.auth_state["access_token"] == "old"


def test_the_sentence_says_until_when_and_what_to_do() -> None:
    expires = datetime(2026, 12, 3, 14, 5, 59, tzinfo=UTC).timestamp()
    assert lost_login_sentence("Helmholtz AAI", expires, now=expires - 300) == (
        "Your login could not be renewed with Helmholtz AAI; log in to the hub again "
        "before 14:05 UTC, or the lab's job can no longer be followed."
    )
    assert lost_login_sentence("Helmholtz AAI", expires, now=expires + 1) == (
        "Your login could not be renewed with Helmholtz AAI; log in to the hub again, or "
        "the lab's job can no longer be followed."
    )


def test_checks_while_a_start_is_followed_come_every_half_margin_within_bounds() -> None:
    assert check_interval(300) == 30
    assert check_interval(20) == 10
    assert check_interval(0) == 1


@pytest.mark.integration
async def test_a_lab_is_told_once_that_the_login_cannot_be_renewed(
    backend: RunningBackend,
) -> None:
    """Each poll asks; the lab gets the sentence once, the log one line, the provider
    one question; after a renewal that worked, a new failure is told again."""
    user = FakeUser("rita", tokens("old", 30))
    auth = FakeAuthenticator(False)
    spawner = LablinkSpawner(
        user=user,
        authenticator=auth,
        backend_url=backend.url,
        backend_token=backend.tokens["hub"],
        token_refresh_retry=1.0,
    )
    async with backend.client("rita") as rita:
        lab_id = (await rita.post("/labs", json=lab_request("rita"))).json()["id"]
        await wait_state(rita, lab_id, {"running"})
        spawner.lab_id = lab_id
        for _ in range(4):
            assert await spawner.poll() is None
        events = (await rita.get(f"/labs/{lab_id}/events")).json()
        told = [e for e in events if e["message"].startswith("Your login could not be renewed")]
        assert len(told) == 1 and told[0]["state"] == "running"
        assert "with Test AAI; log in to the hub again before" in told[0]["message"]
        assert auth.calls == 1

        auth.answer = renewed("rita", "renewed")
        await asyncio.sleep(1.05)  # the wait is over
        assert await spawner.poll() is None
        assert auth.calls == 2
        user.auth_state = tokens("renewed", 30)  # due again, and it fails again
        auth.answer = False
        assert await spawner.poll() is None
        events = (await rita.get(f"/labs/{lab_id}/events")).json()
        told = [e for e in events if e["message"].startswith("Your login could not be renewed")]
        assert len(told) == 2 and auth.calls == 3
        await stop_and_wait(rita, lab_id)
