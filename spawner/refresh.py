"""Keeping a person's OIDC access token valid while any of their labs is active.

The backend follows a lab on an HPC system with the person's access token (UNICORE
calls with ``auth: {method: bearer}``), for hours when the job waits in a queue.
JupyterHub refreshes a login only when the person uses the hub (``auth_refresh_age``,
``refresh_pre_spawn``); the spawner does it too, from ``poll()`` and while ``start()``
follows the lab, with :func:`renew_login`:

- when ``auth_state``'s ``expires_at`` is within the authenticator's
  ``refresh_margin``, the authenticator's ``refresh_user`` renews the login (for
  ``LablinkOIDCAuthenticator``: oauthenticator's refresh with the refresh token), and
  the new auth model is stored as JupyterHub stores one after a login
  (:func:`save_auth_model`);
- one renewal at a time per person: the named servers of one person share it, and
  the ones that waited find the token renewed;
- after a renewal that failed (or that brought nothing new) the provider is asked
  again only after ``retry`` seconds, not at every poll. The failure lasts until a
  renewal succeeds or the person logs in again (a new ``expires_at``); each lab is
  told of it once (:attr:`Attempt.told`).

An authenticator without ``refresh_margin`` (the demo login has no tokens) is left
alone: :func:`renew_login` returns None.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jupyterhub.utils import maybe_future


@dataclass
class Attempt:
    """A renewal that brought no new token: failed, or the authenticator said nothing
    changed. It stands until a renewal succeeds or the login changes."""

    expires_at: float  # of the token that was not renewed
    retry_at: float  # time.monotonic() from which the provider is asked again
    failed: bool  # the person has to log in again (not: nothing changed)
    told: set[str] = field(default_factory=set)  # ids of the labs told of it


@dataclass(frozen=True)
class Renewal:
    """What keeping the login fresh came to: the newest auth_state, whether it was renewed
    just now, and the attempt that failed if the login cannot be renewed."""

    auth_state: dict[str, Any]
    renewed: bool = False
    failure: Attempt | None = None


# one renewal at a time per person (by name); a lock nobody holds or waits for goes
_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
# the last attempt per person that brought no new token
_attempts: dict[str, Attempt] = {}


def refresh_margin(authenticator: Any) -> float | None:
    """The authenticator's ``refresh_margin`` in seconds; None if it keeps no tokens."""
    margin = getattr(authenticator, "refresh_margin", None)
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        return None
    if not callable(getattr(authenticator, "refresh_user", None)):
        return None
    return float(margin)


def check_interval(margin: float) -> float:
    """Seconds between checks while a start is followed: half the margin, at most 30 s,
    at least 1 s."""
    return max(1.0, min(30.0, margin / 2))


def expires_at(auth_state: dict[str, Any]) -> float | None:
    value = auth_state.get("expires_at")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def due(auth_state: dict[str, Any], margin: float, now: float | None = None) -> bool:
    """Whether the access token expires within ``margin`` seconds (or has expired)."""
    expires = expires_at(auth_state)
    if expires is None or not auth_state.get("access_token"):
        return False
    return expires - (time.time() if now is None else now) <= margin


def lost_login_sentence(provider: str, expires: float | None, now: float | None = None) -> str:
    """What a lab's person is told when their login could not be renewed."""
    now = time.time() if now is None else now
    if expires is not None and expires > now:
        # rounded down: the person is never told a time after the token's end
        when = datetime.fromtimestamp(expires, UTC).strftime("%H:%M")
        return (
            f"Your login could not be renewed with {provider}; log in to the hub again "
            f"before {when} UTC, or the lab's job can no longer be followed."
        )
    return (
        f"Your login could not be renewed with {provider}; log in to the hub again, or "
        "the lab's job can no longer be followed."
    )


async def save_auth_model(user: Any, authenticator: Any, model: dict[str, Any]) -> None:
    """Store a renewed auth model as JupyterHub's ``BaseHandler.auth_to_user`` stores a
    refreshed one: the admin flag and user_info when given, groups and roles when the
    authenticator manages them, and auth_state (through reconcile_auth_state_hook)."""
    if model.get("name", user.name) != user.name:
        raise ValueError(f"the renewed login is {model.get('name')!r}, not {user.name!r}")
    admin = model.get("admin")
    if admin is not None and admin != user.admin:
        user.admin = admin
    if model.get("user_info") is not None:
        user.user_info = model["user_info"]
    if getattr(authenticator, "manage_groups", False) and model.get("groups") is not None:
        user.sync_groups(model["groups"])
    if getattr(authenticator, "manage_roles", False) and model.get("roles") is not None:
        user.sync_roles(model["roles"])
    if "auth_state" not in model:  # as refresh_auth does: keep what there is
        model = {**model, "auth_state": await user.get_auth_state()}
    auth_state = model["auth_state"]
    if not getattr(authenticator, "enable_auth_state", False):
        auth_state = None
    else:
        hook = getattr(authenticator, "reconcile_auth_state_hook", None)
        if hook is not None:
            existing = await user.get_auth_state()
            auth_state = await maybe_future(hook(authenticator, model, existing))
    await user.save_auth_state(auth_state)
    user._auth_refreshed = time.monotonic()  # the hub's own check need not come at once


async def renew_login(user: Any, authenticator: Any, retry: float, log: Any) -> Renewal | None:
    """Renew the person's login if its access token expires within the authenticator's
    ``refresh_margin``; None for an authenticator without tokens.

    A renewal that fails is not tried again for ``retry`` seconds (the same failure
    is returned meanwhile); exceptions of ``refresh_user`` count as failures.
    """
    margin = refresh_margin(authenticator)
    if margin is None:
        return None
    state = await user.get_auth_state() or {}
    if not due(state, margin):
        _attempts.pop(user.name, None)
        return Renewal(state)
    lock = _locks.get(user.name)
    if lock is None:
        lock = _locks[user.name] = asyncio.Lock()
    async with lock:
        # another server of the person may have renewed it while this one waited
        state = await user.get_auth_state() or {}
        expires = expires_at(state)
        if not due(state, margin) or expires is None:
            _attempts.pop(user.name, None)
            return Renewal(state)
        last = _attempts.get(user.name)
        if last is not None and last.expires_at != expires:
            last = None  # the person logged in again meanwhile
        if last is not None and time.monotonic() < last.retry_at:
            return Renewal(state, failure=last if last.failed else None)
        try:
            model = await authenticator.refresh_user(user, None)
            if isinstance(model, dict):
                await save_auth_model(user, authenticator, model)
        except Exception as exc:  # a provider or a hook that breaks: a failure
            log.warning("renewing the login of %s broke: %r", user.name, exc)
            model = False
        if isinstance(model, dict):
            new = model.get("auth_state")
            if isinstance(new, dict) and new.get("access_token") != state.get("access_token"):
                _attempts.pop(user.name, None)
                return Renewal(new, renewed=True)
            model = True  # stored, but no new token
        failed = model is not True
        retry_at = time.monotonic() + retry
        if last is not None and last.failed == failed:
            last.retry_at = retry_at  # the same failure goes on: its labs were told
        else:
            last = _attempts[user.name] = Attempt(expires, retry_at, failed)
        return Renewal(state, failure=last if failed else None)
