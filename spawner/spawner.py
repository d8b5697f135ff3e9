"""LablinkSpawner: a JupyterHub spawner that asks the Lablink backend.

It decides nothing: the backend validates options, runs the lab and owns its
state. The spawner sends the start request, follows the lab's events (they
become the spawn page's progress bar), and maps the backend's answers onto
JupyterHub's contract:

- ``start()`` returns the URL the proxy routes to once the lab is running,
  and raises a ``SpawnException`` with the backend's sentence when the backend
  refuses the request (4xx, shown to the person with the same status) or the
  lab fails to start (its last output is shown on the spawn page).
- ``poll()`` returns None while the lab is active, 0 once it stopped, 1 if it
  failed, and None if the backend cannot be asked right now (a backend that
  restarts does not make the hub drop running labs).
- the person's access token is kept valid while the lab is active: ``poll()``,
  and a task beside ``start()`` while it follows the lab (JupyterHub does not poll
  a pending spawn), renew the login when the token is about to expire and hand the
  new one to the backend; a login that cannot be renewed is a sentence among the
  lab's events (spawner/refresh.py).
- ``stop()`` asks the backend to stop the lab and waits until it has.
- ``get_state()`` / ``load_state()`` keep the lab id, so a restarted hub finds
  its labs again.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from jupyterhub.spawner import Spawner, SpawnException
from sqlalchemy.orm import object_session
from traitlets import Float, List, TraitError, Unicode, default, validate

from backend.config_base import service_url

from .client import FINAL, BackendClient, BackendError
from .follow import SharedFollow
from .form import options_form_html, options_from_form
from .logs import REFUSED, Refusal, quiet_refusals
from .refresh import Attempt, check_interval, lost_login_sentence, refresh_margin, renew_login
from .vo import identity


class LabSpawnError(SpawnException):
    """A refused or failed start, with the sentence JupyterHub shows the person."""

    def __init__(self, message: str, *, reason: str, status_code: int, detail: str = ""):
        message_html = html.escape(message)
        if detail:
            message_html += f"<pre class='lablink-output'>{html.escape(detail)}</pre>"
        super().__init__(message, reason=reason, status_code=status_code, message_html=message_html)
        self.jupyterhub_message = message
        self.jupyterhub_html_message = message_html


class LabRefused(LabSpawnError, Refusal):
    """A start the backend refused (4xx): the person can change their choices.
    ``options`` are what they chose, ``field`` the option the sentence is about."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        options: dict[str, Any],
        field: str,
        form_url: str = "",
    ):
        super().__init__(message, reason="refused", status_code=status_code)
        self.options = options
        self.field = field
        self.form_html = self.jupyterhub_html_message  # the form shows the choices itself
        if form_url:
            # where the refusal reaches the person away from the form (the progress page
            # of a start that took longer than the hub's slow_spawn_timeout), a way back
            self.jupyterhub_html_message += (
                f' <a class="lablink-back-to-form" href="{html.escape(form_url)}">'
                "Change your choices</a>"
            )
        REFUSED.add(self)


class LablinkSpawner(Spawner):
    backend_url = Unicode(
        help="""URL of the Lablink backend, for example http://127.0.0.1:8010.

        Defaults to the environment variable LABLINK_BACKEND_URL.""",
    ).tag(config=True)

    @default("backend_url")
    def _default_backend_url(self) -> str:
        return os.environ.get("LABLINK_BACKEND_URL", "http://127.0.0.1:8010")

    @validate("backend_url")
    def _backend_url_is_tls(self, proposal: dict[str, Any]) -> str:
        try:
            return service_url(str(proposal["value"]))
        except ValueError as exc:
            raise TraitError(f"LablinkSpawner.backend_url: {exc}") from None

    backend_ca_bundle = Unicode(
        "",
        help="""A CA file (PEM) to verify the backend's TLS certificate with; unset: the
        system's CAs. Defaults to the environment variable LABLINK_BACKEND_CA_BUNDLE.""",
    ).tag(config=True)

    @default("backend_ca_bundle")
    def _default_backend_ca_bundle(self) -> str:
        return os.environ.get("LABLINK_BACKEND_CA_BUNDLE", "")

    backend_token = Unicode(
        help="""Bearer token with role 'hub' in the backend's site file.

        Defaults to the environment variable LABLINK_BACKEND_TOKEN. Keep it out
        of jupyterhub_config.py when that file is shared.""",
    ).tag(config=True)

    @default("backend_token")
    def _default_backend_token(self) -> str:
        return os.environ.get("LABLINK_BACKEND_TOKEN", "")

    backend_timeout = Float(
        10.0, help="Seconds to wait for one answer of the backend before giving up on it."
    ).tag(config=True)

    stop_wait = Float(
        120.0,
        help="""Seconds stop() waits for the backend to report the lab stopped.

        After that the hub considers the server stopped; the backend goes on
        stopping it.""",
    ).tag(config=True)

    form_template_paths = List(
        Unicode(),
        help="""Folders searched for the options form's template (lablink_form.html)
        before Lablink's own, so a site can change how the form looks.

        The template gets the backend's catalog: the systems with their fields, and
        the active VO with its quota (see spawner/templates/lablink_form.html).""",
    ).tag(config=True)

    start_timeout_margin = Float(
        60.0,
        help="""Seconds the hub waits beyond a system's own limit for a start.

        Each system tells the backend's catalog how long its starts may take at most
        (queue wait included, `start_limit`); the hub's start_timeout for a lab is
        that plus this margin, so the backend's own sentence reaches the person
        before JupyterHub's generic timeout.""",
    ).tag(config=True)

    token_refresh_retry = Float(
        300.0,
        help="""Seconds before the hub asks the identity provider again to renew a login it
        could not renew.

        While a person's lab is active the hub renews their access token before it
        expires (the authenticator's refresh_margin), so the backend can go on
        following the lab. When that fails, the lab gets one sentence telling the
        person to log in again, and the provider is asked again only after this long.""",
    ).tag(config=True)

    lab_id = Unicode(None, allow_none=True, help="The backend's id of the current lab (state).")

    _clients: dict[tuple[str, str, str], BackendClient] = {}

    refused: LabRefused | None = None
    """The last start the backend refused, until the spawn page has shown it again."""

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # the lab runs elsewhere: the hub's own PATH and friends mean nothing there
        return []

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        return _backend_decides

    @default("options_form")
    def _default_options_form(self) -> Any:
        return _render_form

    @property
    def backend(self) -> BackendClient:
        key = (self.backend_url, self.backend_token, self.backend_ca_bundle)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = BackendClient(
                self.backend_url,
                self.backend_token,
                timeout=self.backend_timeout,
                ca_bundle=self.backend_ca_bundle,
            )
        return client

    @property
    def _who(self) -> str:
        """Whom the backend calls act for: the server's owner, also when a hub admin
        starts or stops it (the spawner never asks the backend for admin powers)."""
        return str(self.user.name)

    # -- state ------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.lab_id:
            state["lab_id"] = self.lab_id
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.lab_id = state.get("lab_id")

    def clear_state(self) -> None:
        super().clear_state()
        self.lab_id = None

    # -- options ----------------------------------------------------------------

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return options_from_form(formdata)

    # -- lifecycle --------------------------------------------------------------

    async def _request_body(self) -> dict[str, Any]:
        options = dict(self.user_options or {})
        vo = options.pop("vo", None)  # the VO the form was shown for; unset: the active one
        body: dict[str, Any] = {
            "user": {
                "name": self.user.name,
                **await identity(self.user),
                "admin": bool(getattr(self.user, "admin", False)),
                "access_token": await self._access_token(),
            },
            "server_name": self.name or "",
            "vo": vo if isinstance(vo, str) and vo else None,
            "options": options,
            "env": {k: str(v) for k, v in self.get_env().items()},
        }
        workshop = options.pop("workshop", None)
        if workshop is not None:
            # a workshop's lab: the backend takes the workshop's presets; any other
            # option sent along is refused by the backend with its sentence
            body["workshop"] = workshop
            body["vo"] = None
        return body

    async def start(self) -> str:
        user = self._who
        body = await self._request_body()
        asked = time.monotonic()
        try:
            try:  # a fresh key per start: a retry of a lost answer finds the lab stored
                lab = await self.backend.create(body, user, uuid.uuid4().hex, self._log_name)
            except BackendError as exc:
                if exc.status != 409:
                    raise
                # the backend still has an active lab for this server the hub has
                # forgotten (a hub that lost its database): stop it, then start anew
                await self._stop_existing(user)
                lab = await self.backend.create(body, user, uuid.uuid4().hex, self._log_name)
        except BackendError as exc:
            if exc.status >= 500:
                self.log.warning("%s: the backend cannot start it: %s", self._log_name, exc.detail)
                raise LabSpawnError(exc.detail, reason="backend", status_code=503) from None
            quiet_refusals(self.log)
            self.log.warning("%s: start refused: %s", self._log_name, exc.detail)
            refusal = LabRefused(
                exc.detail,
                status_code=exc.status,
                options=dict(self.user_options or {}),
                field=exc.field,
                form_url=self._form_url(),
            )
            self._forget_refused_options()
            self._forget_failure()
            self.refused = refusal  # the form shows it once, with these choices
            raise refusal from None
        self.lab_id = lab["id"]
        took = (time.monotonic() - asked) * 1000
        self.log.info("%s: lab %s accepted in %.0f ms", self._log_name, self.lab_id, took)
        keeper = None
        if refresh_margin(self.authenticator) is not None:
            keeper = asyncio.create_task(
                self._keep_login_fresh_while_starting(body["user"]["access_token"]),
                name=f"keep-login-{self.lab_id}",
            )
        try:
            return await self._follow_start(user)
        finally:
            if keeper is not None:
                keeper.cancel()
                await asyncio.wait([keeper])

    def _form_url(self) -> str:
        """The address of this server's form on the hub ('' when the hub is unknown)."""
        hub = getattr(self, "hub", None)
        base = str(getattr(hub, "base_url", "") or "")
        if not base:
            return ""
        return f"{base}spawn/{self.user.escaped_name}/{quote(self.name or '', safe='')}".rstrip("/")

    async def _follow_start(self, user: str) -> str:
        assert self.lab_id is not None
        async for event in self.backend.follow(self.lab_id, user):
            if event["state"] == "running":
                current = await self.backend.get(self.lab_id, user)
                if current and current.get("url"):
                    return str(current["url"])
            if event["state"] in FINAL:
                raise LabSpawnError(
                    event["message"],
                    reason="lab-failed",
                    status_code=502,
                    detail=event.get("detail", ""),
                )
        raise LabSpawnError(
            "The lab ended before it was ready.", reason="lab-failed", status_code=502
        )

    async def _keep_login_fresh_while_starting(self, handed: str | None) -> None:
        """While start() follows the lab: renew the login when it is due and hand each
        new token to the backend (a queue wait may outlast many tokens)."""
        margin = refresh_margin(self.authenticator)
        assert margin is not None
        handed_digest = _digest(handed)
        while True:
            await asyncio.sleep(check_interval(margin))
            try:
                token = await self.keep_login_fresh()
                # new, or renewed by another of the person's servers, or a new login
                if token and _digest(token) != handed_digest and self.lab_id:
                    await self.backend.get(self.lab_id, self._who, token)
                    handed_digest = _digest(token)
            except Exception as exc:  # logged; the start goes on
                self.log.warning(
                    "%s: keeping the login fresh for lab %s failed: %r",
                    self._log_name,
                    self.lab_id,
                    exc,
                )

    async def keep_login_fresh(self) -> str | None:
        """Renew the person's access token when it expires within the authenticator's
        refresh_margin, and tell this lab, once, when the login cannot be renewed.

        Returns the person's current access token (None without one). An
        authenticator without tokens (the demo login) is left alone.
        """
        renewal = await renew_login(
            self.user, self.authenticator, self.token_refresh_retry, self.log
        )
        if renewal is None:
            return await self._access_token()
        if renewal.renewed:
            self.log.info(
                "%s: renewed the login of %s for lab %s",
                self._log_name,
                self.user.name,
                self.lab_id,
            )
        failure = renewal.failure
        if failure is not None and self.lab_id and self.lab_id not in failure.told:
            failure.told.add(self.lab_id)
            await self._tell_lost_login(failure)
        return _token_of(renewal.auth_state)

    async def _tell_lost_login(self, failure: Attempt) -> None:
        assert self.lab_id is not None
        provider = str(getattr(self.authenticator, "login_service", "") or "")
        sentence = lost_login_sentence(provider or "your identity provider", failure.expires_at)
        self.log.warning(
            "%s: the login of %s could not be renewed; telling lab %s",
            self._log_name,
            self.user.name,
            self.lab_id,
        )
        try:
            await self.backend.notice(self.lab_id, self._who, sentence)
        except BackendError as exc:
            failure.told.discard(self.lab_id)  # told at the next check
            self.log.warning("%s: cannot tell lab %s: %s", self._log_name, self.lab_id, exc.detail)

    def _forget_failure(self) -> None:
        """JupyterHub keeps a failed start so that /user/<name> shows "Spawn failed"
        instead of starting again; a refused start began nothing, so once it is over
        the server is simply not running: Home, /hub/spawn and /user/<name>/… lead
        to the form (the progress stream of a spawn page still open keeps the
        sentence)."""
        future = getattr(self, "_spawn_future", None)
        if future is None:
            return

        def forget(done: asyncio.Future[Any]) -> None:
            if getattr(self, "_spawn_future", None) is done:
                setattr(self, "_spawn_future", None)  # noqa: B010  (JupyterHub's own)

        future.add_done_callback(forget)

    def _forget_refused_options(self) -> None:
        """JupyterHub keeps a start's options for the next start that names none; options
        the backend refused are not kept, so an empty start gets the site's defaults."""
        orm = getattr(self, "orm_spawner", None)
        if orm is None or orm.user_options != self.user_options:
            return
        orm.user_options = None
        db = object_session(orm)  # the hub's session (Spawner.db is deprecated)
        if db is not None:
            db.commit()

    async def _stop_existing(self, user: str) -> None:
        for lab in await self._labs_of_this_server(user):
            await self.backend.delete(lab["id"], user)
            async for _event in self.backend.follow(lab["id"], user):
                pass

    async def _labs_of_this_server(self, user: str) -> list[dict[str, Any]]:
        resp = await self.backend._request(
            "GET", "/labs", user, params={"user": user, "active": "true"}
        )
        return [lab for lab in resp.json() if lab["server_name"] == (self.name or "")]

    async def _access_token(self) -> str | None:
        """The person's current access token from auth_state (None without one)."""
        return _token_of(await self.user.get_auth_state() or {})

    async def poll(self) -> int | None:
        if not self.lab_id:
            return 0
        user = self._who
        try:
            token = await self.keep_login_fresh()
        except Exception as exc:  # logged; the poll goes on with the token there is
            self.log.warning("%s: cannot keep the login fresh: %r", self._log_name, exc)
            token = await self._access_token()
        try:
            # each poll hands the backend the newest token, so it can keep talking
            # to UNICORE for the person (also after a restart of the backend)
            lab = await self.backend.get(self.lab_id, user, token)
        except BackendError as exc:
            self.log.warning("%s: cannot poll the backend: %s", self._log_name, exc.detail)
            return None
        if lab is None:
            return 0
        return lab["exit_status"]  # type: ignore[no-any-return]

    async def stop(self, now: bool = False) -> None:
        if not self.lab_id:
            return
        user = self._who
        lab_id = self.lab_id
        try:
            lab = await self.backend.delete(lab_id, user, await self._access_token())
            if lab is None or lab["state"] in FINAL:
                return
            await asyncio.wait_for(self._drain(lab_id, user), self.stop_wait)
        except (BackendError, TimeoutError) as exc:
            self.log.warning("%s: stop of lab %s not confirmed: %s", self._log_name, lab_id, exc)

    async def _drain(self, lab_id: str, user: str) -> None:
        async for _event in self.backend.follow(lab_id, user):
            pass

    _follow: SharedFollow | None = None

    def _shared_follow(self) -> SharedFollow:
        """The one stream of this lab's events that every progress page shares."""
        lab_id = str(self.lab_id)
        if self._follow is None or self._follow.lab_id != lab_id:
            user = self._who
            self._follow = SharedFollow(
                lab_id, lambda after: self.backend.follow(lab_id, user, after)
            )
        return self._follow

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        # the lab id exists once the backend accepted the request
        while not self.lab_id:
            if not self._spawn_pending:
                return
            await asyncio.sleep(0.05)
        async for event in self._shared_follow().read():
            item = {"progress": event["progress"], "message": event["message"]}
            if event.get("detail"):
                item["html_message"] = (
                    f"{html.escape(event['message'])}"
                    f"<pre class='lablink-output'>{html.escape(event['detail'])}</pre>"
                )
            yield item
            if event["state"] == "running":
                return


def _token_of(auth_state: dict[str, Any]) -> str | None:
    token = auth_state.get("access_token")
    return token if isinstance(token, str) and token else None


def _digest(token: str | None) -> bytes | None:
    """What tells one token from another without keeping it."""
    return hashlib.sha256(token.encode()).digest() if token else None


@dataclass
class StartLimits:
    """The site's default system and each system's start limit (seconds) as the backend's
    catalog gave them, and when (time.monotonic())."""

    default_system: str = ""
    limits: dict[str, float] = field(default_factory=dict)
    read: float = -math.inf


# by backend URL: the limits are the site file's, the same for everybody, so a burst of
# starts asks the backend's catalog once (a workshop's hundred starts asked it a hundred
# times, each counting every VO's labs); asked again when older than START_LIMITS_AGE
_start_limits: dict[str, StartLimits] = {}
_start_limits_reading: dict[str, asyncio.Task[StartLimits]] = {}
START_LIMITS_AGE = 300.0


K = TypeVar("K")
T = TypeVar("T")


def read_once(
    readings: dict[K, asyncio.Task[T]], key: K, read: Callable[[], Coroutine[Any, Any, T]]
) -> Awaitable[T]:
    """One ``read()`` for all callers that ask for ``key`` while it runs (``readings``
    holds the running ones); a caller that gives up does not cancel it for the others."""
    task = readings.get(key)
    if task is None:
        task = readings[key] = asyncio.create_task(read())
        task.add_done_callback(lambda _task: readings.pop(key, None))
    return asyncio.shield(task)


async def _read_start_limits(spawner: LablinkSpawner) -> StartLimits:
    catalog = await spawner.backend.catalog(spawner.user.name)
    known = _start_limits.get(spawner.backend_url) or StartLimits()
    limits = dict(known.limits)  # a person's catalog lists only the systems they may use
    for system in catalog.get("systems") or []:
        if isinstance(system.get("start_limit"), int | float):
            limits[str(system.get("name"))] = float(system["start_limit"])
    fresh = StartLimits(str(catalog.get("default_system") or ""), limits, time.monotonic())
    _start_limits[spawner.backend_url] = fresh
    return fresh


async def start_limits(spawner: LablinkSpawner, system: str | None) -> StartLimits:
    """What the catalog says of start limits: kept for START_LIMITS_AGE seconds; read
    (once for all starts that ask at the same time) when older, or when ``system`` is
    not among them (another person may see systems the last catalog did not list)."""
    key = spawner.backend_url
    known = _start_limits.get(key)
    if (
        known is not None
        and time.monotonic() - known.read < START_LIMITS_AGE
        and (system or known.default_system) in known.limits
    ):
        return known
    return await read_once(_start_limits_reading, key, lambda: _read_start_limits(spawner))


# a workshop's system by backend URL and workshop id: it never changes (a PATCH cannot
# change it), so a workshop's burst of starts asks the backend once, not once per start
_workshop_systems: dict[tuple[str, str], str] = {}
_workshop_systems_reading: dict[tuple[str, str], asyncio.Task[str]] = {}


async def workshop_system(spawner: LablinkSpawner, workshop: str) -> str:
    """The system of a workshop ('' if the backend does not say), asked as the person
    (once for all starts that ask at the same time); raises BackendError."""
    key = (spawner.backend_url, workshop)
    if key in _workshop_systems:
        return _workshop_systems[key]

    async def read() -> str:
        found = await spawner.backend.workshop(workshop, spawner.user.name)
        system = str(found.get("system") or "")
        if system:
            _workshop_systems[key] = system
        return system

    return await read_once(_workshop_systems_reading, key, read)


async def _backend_decides(spawner: LablinkSpawner, user_options: dict[str, Any]) -> None:
    """user_options travel to the backend as they are; it validates them. Only the
    start timeout follows the chosen system: its start_limit from the catalog."""
    options = user_options or {}
    asked = options.get("system") if isinstance(options.get("system"), str) else None
    workshop = options.get("workshop")
    if isinstance(workshop, str) and workshop:
        # a workshop's lab runs on the workshop's system (the backend checks the rest)
        try:
            asked = await workshop_system(spawner, workshop) or asked
        except BackendError as exc:  # the start itself gets the backend's sentence
            spawner.log.debug("%s: workshop %s: %s", spawner._log_name, workshop, exc.detail)
    try:
        found = await start_limits(spawner, asked)
    except BackendError as exc:
        spawner.log.warning("%s: cannot load the catalog: %s", spawner._log_name, exc.detail)
        return
    chosen = asked or found.default_system
    limit = found.limits.get(chosen) if isinstance(chosen, str) else None
    if limit is not None:
        spawner.start_timeout = int(limit + spawner.start_timeout_margin)
        spawner.log.debug(
            "%s: start timeout %ss for system %s",
            spawner._log_name,
            spawner.start_timeout,
            chosen,
        )


async def _render_form(spawner: LablinkSpawner) -> str:
    """The form; after a refused start, with the person's choices and the refused field
    marked, else with the last start's choices of this server."""
    try:
        await spawner.backend.put_user(spawner.user.name, await identity(spawner.user))
        catalog = await spawner.backend.catalog(spawner.user.name)
    except BackendError as exc:
        spawner.log.warning("cannot load the catalog: %s", exc.detail)
        catalog = None
    refused = spawner.refused  # the spawn page shows it once, then forgets it
    chosen = refused.options if refused else dict(spawner.user_options or {})
    return options_form_html(
        catalog,
        spawner.form_template_paths,
        chosen=chosen,
        error_field=refused.field if refused else "",
        user=str(spawner.user.name),
    )
