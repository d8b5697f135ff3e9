"""The backend's v1 HTTP API (paths under ``/api/v1``)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import weakref
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .auth import USER_NAME, USER_NAME_HELP, Principal, authenticate
from .catalog import OptionError, catalog, vo_entry
from .db import utcnow
from .labs import LabManager, NotInVO
from .states import FINAL, PROGRESS, InvalidTransition, LabState, exit_status
from .store import (
    AdmissionFailed,
    Event,
    Lab,
    LabTimes,
    QuotaExceeded,
    ServerNameBusy,
    Store,
    UserRecord,
)
from .systems.driver import lab_log_name
from .vos import MAX_ENTITLEMENT, Identity, VOSettings, memberships
from .workshops import PersonView, window_refusal

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
SERVER_NAME = r"^[A-Za-z0-9._~-]{0,255}$"
LAB_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # text the database can store and a log can show
log = logging.getLogger("lablink.backend.api")
HEARTBEAT_SECONDS = 15.0
MAX_NOTICE = 1000  # characters of a notice on a lab
MAX_SEQ = 2**31 - 1  # event numbers are 32-bit integers in the database

router = APIRouter(prefix="/api/v1")
Auth = Annotated[Principal, Depends(authenticate)]


# -- models -------------------------------------------------------------------


GroupName = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_CONTROL)]
Entitlement = Annotated[str, Field(min_length=1, max_length=MAX_ENTITLEMENT, pattern=NO_CONTROL)]
VO_NAME = r"^[a-z][a-z0-9-]{0,62}$"
EMAIL = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
EmailAddress = Annotated[str, Field(max_length=254, pattern=EMAIL)]


class IdentityIn(BaseModel):
    """What the hub knows of a person from the login: groups, entitlements, and the
    e-mail addresses the identity provider verified."""

    model_config = ConfigDict(extra="forbid")
    groups: list[GroupName] = Field(default_factory=list, max_length=1000)
    entitlements: list[Entitlement] = Field(default_factory=list, max_length=1000)
    emails: list[EmailAddress] | None = Field(
        default=None,
        max_length=20,
        description="the person's e-mail addresses that the identity provider says are "
        "verified (a workshop's allow-list may name them); unset: those stored stay",
    )


class UserIn(IdentityIn):
    name: str = Field(max_length=128)
    admin: bool = False
    access_token: SecretStr | None = Field(default=None, max_length=16384)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not USER_NAME.fullmatch(v):
            raise ValueError(f"must be {USER_NAME_HELP}")
        return v


class LabRequest(BaseModel):
    """A start request from the hub."""

    model_config = ConfigDict(extra="forbid")
    user: UserIn
    server_name: str = Field(default="", pattern=SERVER_NAME)
    vo: str | None = Field(
        default=None,
        max_length=64,
        pattern=VO_NAME,
        description="the VO to account the lab to (one of the person's); unset: their active VO",
    )
    options: dict[str, Any] = Field(default_factory=dict, max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=200)
    workshop: str | None = Field(
        default=None,
        max_length=40,
        pattern=r"^[a-z][a-z0-9-]{1,39}$",
        description="a workshop the person joined or organizes: the lab is one of it, with "
        "its presets as options (send no options)",
    )

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not re.fullmatch(ENV_NAME, key):
                raise ValueError(
                    f"variable name {key[:64]!r} must be letters, digits and '_', not starting "
                    "with a digit"
                )
            if len(value) > 32768 or "\x00" in value:
                raise ValueError(f"the value of {key} is too long or holds a NUL character")
        return env


class LabOut(BaseModel):
    id: str
    user: str
    server_name: str
    system: str
    vo: str | None
    options: dict[str, Any]
    state: LabState
    progress: int
    message: str
    url: str | None
    exit_status: int | None = Field(
        description="what JupyterHub's poll() reports: None while active"
    )
    created: datetime
    updated: datetime
    handle: dict[str, Any] | None = Field(
        default=None,
        description="for admins only: what finds the lab on its system (a process id and "
        "port, a job's URL or id and its host:port and tunnel port, a pod's name); None for "
        "everybody else",
    )
    system_display_name: str | None = Field(
        default=None, description="the system's name as people see it (list and get only)"
    )
    choice_display_name: str | None = Field(
        default=None,
        description="the display name of the lab's partition or flavor; None where the "
        "system has neither (list and get only)",
    )
    vo_display_name: str | None = Field(
        default=None, description="the VO's name as people see it (list and get only)"
    )
    started: datetime | None = Field(
        default=None, description="when the lab began to run; None before (list and get only)"
    )
    runtime: int | None = Field(
        default=None,
        description="the lab's wall time in minutes; None: it runs until it is stopped",
    )
    ends: datetime | None = Field(
        default=None,
        description="when the lab's wall time runs out (started + runtime); None while it "
        "has not started or has no wall time (list and get only)",
    )
    failure_detail: str = Field(
        default="",
        description="a failed lab's last output (the detail of its final event); empty "
        "otherwise (list and get only)",
    )


class SiteOut(BaseModel):
    """The site's face for the hub's pages (the login page too, before anyone logs in)."""

    name: str = Field(description="the site's name (branding.name, else site_name)")
    logo: str = Field(description="the logo's address; empty: none")
    login_hint: str = Field(description="how to log in, one or two sentences; empty: none")
    login_hint_url: str = Field(description="an address linked after the hint; empty: none")
    support_url: str = Field(description="where people get help; empty: none")


class VOChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vo: str = Field(max_length=64, pattern=VO_NAME, description="the name of one of your VOs")


class UserOut(BaseModel):
    name: str
    groups: list[str]
    vo: str | None = Field(description="the active VO: new labs are accounted to it")
    vos: list[dict[str, Any]] = Field(
        description="the person's VOs, in the site's order, with quota used/limit"
    )


class EventOut(BaseModel):
    seq: int
    time: datetime
    progress: int
    state: LabState
    message: str
    detail: str


class NoticeIn(BaseModel):
    """A sentence for the person about one of their labs, from the hub."""

    model_config = ConfigDict(extra="forbid")
    message: str = Field(
        min_length=1,
        max_length=MAX_NOTICE,
        description="one or two sentences that say what happened and what to do; control "
        "characters are removed",
    )


class Health(BaseModel):
    status: str
    version: str
    pid: int
    active_labs: int


def lab_out(lab: Lab, admin: bool = False) -> LabOut:
    """A lab as the API shows it; its handle only to admins."""
    return LabOut(
        id=lab.id,
        user=lab.user_name,
        server_name=lab.server_name,
        system=lab.system,
        vo=lab.vo,
        options=lab.options,
        state=lab.state,
        progress=PROGRESS[lab.state],
        message=lab.message,
        url=lab.url if lab.state == LabState.RUNNING else None,
        exit_status=exit_status(lab.state),
        created=lab.created,
        updated=lab.updated,
        handle=dict(lab.handle) if admin else None,
    )


def lab_view(
    settings: Any,
    lab: Lab,
    times: LabTimes | None,
    admin: bool = False,
    titles: dict[str, str] | None = None,
) -> LabOut:
    """A lab as a person's list of labs shows it: with display names, when it began to
    run and when its wall time ends, and a failed lab's last output. ``titles``: the
    titles of workshops, the display names of their VOs."""
    out = lab_out(lab, admin)
    system = settings.systems.get(lab.system)
    vo = settings.vos.get(lab.vo) if lab.vo else None
    if vo is None and lab.vo and titles and lab.vo in titles:
        vo = VOSettings(display_name=titles[lab.vo])
    runtime = system.runtime(lab.options) if system is not None else None
    started = times.started if times else None
    return out.model_copy(
        update={
            "system_display_name": (system.display_name or lab.system) if system else lab.system,
            "choice_display_name": system.choice_name(lab.options) if system else None,
            "vo_display_name": (vo.display_name or lab.vo) if vo else lab.vo,
            "started": started,
            "runtime": runtime,
            "ends": started + timedelta(minutes=runtime) if started and runtime else None,
            "failure_detail": times.failure_detail if times else "",
        }
    )


def event_out(ev: Event) -> EventOut:
    return EventOut(
        seq=ev.seq,
        time=ev.time,
        progress=ev.progress,
        state=ev.state,
        message=ev.message,
        detail=ev.detail,
    )


# -- helpers ------------------------------------------------------------------


def store_of(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def manager_of(request: Request) -> LabManager:
    return request.app.state.manager  # type: ignore[no-any-return]


def acting_user(who: Principal) -> str:
    if who.user is None:
        raise HTTPException(
            400, "The header X-Lablink-User must name the user this request acts for."
        )
    return who.user


async def visible_lab(request: Request, who: Principal, lab_id: str) -> Lab:
    lab = await store_of(request).get_lab(lab_id) if LAB_ID.fullmatch(lab_id) else None
    if lab is None or not who.may_see(lab.user_name):
        raise HTTPException(404, f"No lab with id {lab_id[:64]!r} is visible to you.")
    return lab


# -- routes -------------------------------------------------------------------


@router.get("/health", response_model=Health)
async def health(request: Request, who: Auth) -> Health:
    from . import __version__

    labs = await store_of(request).list_labs(active_only=True)
    return Health(status="ok", version=__version__, pid=os.getpid(), active_labs=len(labs))


@router.get("/site", response_model=SiteOut)
async def get_site(request: Request, who: Auth) -> SiteOut:
    """The site's name, logo, login hint and support link (``branding`` in the site
    file), for the hub's pages; any token may read it, with or without a user."""
    settings = request.app.state.settings
    face = settings.branding
    return SiteOut(
        name=face.name or settings.site_name,
        logo=face.logo,
        login_hint=face.login_hint,
        login_hint_url=face.login_hint_url,
        support_url=face.support_url,
    )


async def identity_of(request: Request, name: str, groups: list[str] | None = None) -> Identity:
    """The person as the hub last described them (``groups``, when given, win)."""
    record = await store_of(request).get_user(name) if name else None
    record = record or UserRecord(name)
    chosen = frozenset(g[:255] for g in groups) if groups else record.groups
    return Identity(name, chosen, record.entitlements)


def windows(view: PersonView, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A workshop's VO outside its window is full, with the sentence a start gets."""
    now = utcnow()
    for entry in entries:
        ws = view.workshops.get(entry["name"])
        refusal = window_refusal(ws, now) if ws is not None else None
        if refusal:
            entry["quota"]["full"] = refusal
    return entries


async def user_out(request: Request, identity: Identity) -> UserOut:
    manager = manager_of(request)
    view = await manager.view(identity)
    vos = view.settings.vos
    active = await manager.active_vo(identity, None, view) if memberships(vos, identity) else None
    usage = await manager.usage(identity, view)
    return UserOut(
        name=identity.user,
        groups=sorted(identity.groups),
        vo=active,
        vos=windows(
            view,
            [vo_entry(v, vos[v], v == active, usage.get(v)) for v in memberships(vos, identity)],
        ),
    )


def acting_for(who: Principal, name: str) -> None:
    if not USER_NAME.fullmatch(name):
        raise HTTPException(404, "No such user.")
    if not who.may_see(name):
        raise HTTPException(
            403, f"This request acts for {who.user!r} and cannot read or change another user."
        )


@router.get("/catalog")
async def get_catalog(
    request: Request,
    who: Auth,
    group: Annotated[list[str], Query(max_length=1000)] = [],  # noqa: B006
    vo: Annotated[str | None, Query(max_length=64, pattern=VO_NAME)] = None,
) -> dict[str, Any]:
    """The systems the acting user may start labs on in their active VO (or ``vo``),
    with their options (partitions, ranges, accounts and projects, all cut to the
    VO's allowances), and the user's VOs with quota used/limit. ``group`` names
    the user's hub groups (default: what the hub last sent with ``PUT users``)."""
    user = acting_user(who) if who.user is not None or not who.admin else ""
    identity = await identity_of(request, user, group)
    manager = manager_of(request)
    view = await manager.view(identity)
    settings = view.settings
    mine = memberships(settings.vos, identity)
    try:
        active = await manager.active_vo(identity, vo, view) if mine or vo else None
    except NotInVO as exc:
        raise HTTPException(403, str(exc)) from None
    if manager.settings.vos and active is None:
        # in no VO: nothing to offer; the hub says why
        return {**catalog(settings, user, identity.groups, vo=None), "systems": []}
    found = catalog(
        settings,
        user,
        identity.groups,
        entitlements=identity.entitlements,
        vo=active,
        vos=mine,
        usage=await manager.usage(identity, view),
    )
    found["vos"] = windows(view, found["vos"])
    return found


@router.put("/users/{name}", response_model=UserOut)
async def put_user(request: Request, name: str, body: IdentityIn, who: Auth) -> UserOut:
    """Store what the hub knows of a person (groups, entitlements), at login and before
    the catalog; answers with their VOs and the active one."""
    acting_for(who, name)
    record = await store_of(request).put_identity(name, body.groups, body.entitlements, body.emails)
    return await user_out(request, Identity(name, record.groups, record.entitlements))


@router.get("/users/{name}", response_model=UserOut)
async def get_user(request: Request, name: str, who: Auth) -> UserOut:
    acting_for(who, name)
    return await user_out(request, await identity_of(request, name))


@router.put("/users/{name}/vo", response_model=UserOut)
async def put_user_vo(request: Request, name: str, body: VOChoice, who: Auth) -> UserOut:
    """Choose the active VO: the catalog is cut to it and new labs are accounted to it."""
    acting_for(who, name)
    identity = await identity_of(request, name)
    try:
        manager = manager_of(request)
        view = await manager.view(identity)
        if not view.settings.vos:
            raise NotInVO("vo: this site has no VOs.")
        vo = await manager.active_vo(identity, body.vo, view)
    except NotInVO as exc:
        raise HTTPException(403, str(exc)) from None
    await store_of(request).set_active_vo(name, vo)
    return await user_out(request, identity)


@router.post("/labs", status_code=202, response_model=LabOut)
async def create_lab(
    request: Request,
    body: LabRequest,
    who: Auth,
    response: Response,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1 to 64 of A-Z a-z 0-9 . _ : - (a fresh uuid per start): the same "
            "start sent again with it answers the lab the first one stored",
        ),
    ] = None,
) -> LabOut | JSONResponse:
    """Accept a lab: validate its options, store it, and start it in the background.

    With the header ``Idempotency-Key``, the same request sent again (a retry after a
    lost answer) answers the lab the first one stored, while it is active."""
    if who.user is not None and who.user != body.user.name and not who.admin:
        raise HTTPException(
            403, f"This request acts for {who.user!r} and cannot start a lab for another user."
        )
    if key is not None:  # checked here, for a sentence that names the header
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise HTTPException(
                422,
                "The header Idempotency-Key must be 1 to 64 letters, digits and . _ : - "
                "(a fresh uuid per start, for example).",
            )
        mine = await store_of(request).list_labs(user_name=body.user.name, active_only=True)
        earlier = next((lab for lab in mine if lab.request_id == key), None)
        if earlier is not None:
            return same_request(earlier, body.server_name, who, response)
    try:
        lab = await manager_of(request).create(
            user_name=body.user.name,
            server_name=body.server_name,
            vo=body.vo,
            options=body.options,
            env=body.env,
            groups=body.user.groups,
            entitlements=body.user.entitlements,
            emails=body.user.emails,
            access_token=(
                body.user.access_token.get_secret_value() if body.user.access_token else None
            ),
            workshop=body.workshop,
            request_id=key,
        )
    except NotInVO as exc:
        raise HTTPException(403, str(exc)) from None
    except OptionError as exc:  # the sentence for people, the option's key for programs
        return JSONResponse({"detail": exc.sentence, "field": exc.field}, status_code=422)
    except QuotaExceeded as exc:
        shown = manager_of(request).settings.vos.get(exc.admission.vo)
        vo = (shown.display_name if shown else "") or exc.admission.vo
        if shown is None:
            titles = await manager_of(request).workshops.titles([exc.admission.vo])
            vo = titles.get(exc.admission.vo, vo)
        raise HTTPException(429, quota_refusal(exc, vo), headers={"Retry-After": "60"}) from None
    except ServerNameBusy as exc:
        if key is not None and exc.existing is not None and exc.existing.request_id == key:
            return same_request(exc.existing, body.server_name, who, response)  # sent twice at once
        existing = f" (lab {exc.existing.id})" if exc.existing else ""
        name = repr(body.server_name) if body.server_name else "the default server"
        raise HTTPException(
            409,
            f"User {body.user.name!r} already has an active lab for {name}{existing}; "
            "stop it first.",
        ) from None
    except AdmissionFailed:  # the store logged why, once for the whole batch
        raise HTTPException(
            503,
            "The lab could not be stored because the backend's database failed; nothing was "
            "started, try again in a minute.",
            headers={"Retry-After": "60"},
        ) from None
    response.headers["Location"] = f"/api/v1/labs/{lab.id}"
    return lab_out(lab, who.admin)


def same_request(lab: Lab, server_name: str, who: Principal, response: Response) -> LabOut:
    """The answer to a start sent again with the Idempotency-Key of ``lab``: that lab,
    as the first answer had it (or 409 when the key came with another server name)."""
    if lab.server_name != server_name:
        name = repr(lab.server_name) if lab.server_name else "the default server"
        raise HTTPException(
            409,
            f"The Idempotency-Key was already used to start lab {lab.id} for {name}; send a "
            "fresh key with each start.",
        )
    log.info(
        "%s: the same start came again (Idempotency-Key); answered the lab it stored",
        lab_log_name(lab.user_name, lab.server_name, lab.id),
    )
    response.headers["Location"] = f"/api/v1/labs/{lab.id}"
    return lab_out(lab, who.admin)


def quota_refusal(exc: QuotaExceeded, vo: str) -> str:
    """The sentence for a full VO; ``vo`` its display name."""
    used = exc.usage
    if exc.limit == "labs":
        return (
            f"VO {vo} has reached its limit of {exc.admission.labs} active labs "
            f"({used.labs} in use); try again when one has stopped."
        )
    return (
        f"You have {used.user_labs} active labs in VO {vo}, its limit per person "
        f"({exc.admission.labs_per_user}); stop one of them first."
    )


@router.get("/labs", response_model=list[LabOut])
async def list_labs(
    request: Request,
    who: Auth,
    user: Annotated[str | None, Query(max_length=128, pattern=USER_NAME.pattern)] = None,
    active: bool = False,
) -> list[LabOut]:
    """Labs of one user (yours by default); admins may list everybody's."""
    if user is None and not who.admin:
        user = acting_user(who)
    if user is not None and not who.may_see(user):
        raise HTTPException(403, "You can list only your own labs.")
    store = store_of(request)
    labs = await store.list_labs(user_name=user, active_only=active)
    times = await store.lab_times([lab.id for lab in labs])
    settings = request.app.state.settings
    titles = await workshop_titles(request, labs)
    return [lab_view(settings, lab, times.get(lab.id), who.admin, titles) for lab in labs]


async def workshop_titles(request: Request, labs: list[Lab]) -> dict[str, str]:
    """The titles of the workshops these labs belong to (their VOs' display names)."""
    site = request.app.state.settings.vos
    ids = sorted({lab.vo for lab in labs if lab.vo and lab.vo not in site})
    return await manager_of(request).workshops.titles(ids)


AccessToken = Annotated[
    str | None,
    Header(
        alias="X-Lablink-Access-Token",
        max_length=16384,
        pattern=r"^[\x21-\x7e]+$",
        description="the person's current OIDC access token; the backend keeps it in memory "
        "for this lab's UNICORE calls (only from the hub, acting for the lab's owner)",
    ),
]


async def take_token(request: Request, who: Principal, lab: Lab, token: str | None) -> None:
    if token and who.user == lab.user_name:
        await manager_of(request).hand_token(lab, token)


@router.get("/labs/{lab_id}", response_model=LabOut)
async def get_lab(request: Request, lab_id: str, who: Auth, token: AccessToken = None) -> LabOut:
    lab = await visible_lab(request, who, lab_id)
    await take_token(request, who, lab, token)
    times = await store_of(request).lab_times([lab.id])
    titles = await workshop_titles(request, [lab])
    return lab_view(request.app.state.settings, lab, times.get(lab.id), who.admin, titles)


@router.delete("/labs/{lab_id}", status_code=202, response_model=LabOut)
async def delete_lab(request: Request, lab_id: str, who: Auth, token: AccessToken = None) -> LabOut:
    """Stop a lab. Idempotent: stopping a stopped lab answers with it as it is."""
    lab = await visible_lab(request, who, lab_id)
    await take_token(request, who, lab, token)
    return lab_out(await manager_of(request).stop(lab), who.admin)


@router.post("/labs/{lab_id}/notice", response_model=LabOut)
async def post_notice(request: Request, lab_id: str, body: NoticeIn, who: Auth) -> LabOut:
    """Tell the person something about an active lab (the hub: their login could not be
    renewed). Stored as an event in the lab's current state and progress, so it shows
    in the progress stream and as the lab's ``message``; answers the lab. 409 once the
    lab has ended."""
    lab = await visible_lab(request, who, lab_id)
    try:
        lab = await store_of(request).notice(lab.id, body.message)
    except InvalidTransition:
        raise HTTPException(
            409, f"Lab {lab.id} has ended; a notice is kept only for an active lab."
        ) from None
    log.info("%s: notice: %s", lab_log_name(lab.user_name, lab.server_name, lab.id), lab.message)
    return lab_out(lab, who.admin)


@router.get("/labs/{lab_id}/events", response_model=list[EventOut])
async def list_events(
    request: Request,
    lab_id: str,
    who: Auth,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
) -> list[EventOut]:
    """The lab's events with a sequence number above ``after``, oldest first."""
    await visible_lab(request, who, lab_id)
    return [event_out(e) for e in await store_of(request).events(lab_id, after)]


@router.get(
    "/labs/{lab_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(
    request: Request,
    lab_id: str,
    who: Auth,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
) -> StreamingResponse:
    """Server-sent events: every event after ``after`` (or ``Last-Event-ID``) as it is
    stored; the stream ends after the lab reaches a final state."""
    await visible_lab(request, who, lab_id)
    last = request.headers.get("last-event-id", "")
    if last.isascii() and last.isdigit():
        after = max(after, min(int(last), MAX_SEQ))
    store = store_of(request)
    whose = repr(who.user) if who.user else f"the token {who.token_name!r}"
    streams: dict[str, set[int]] = request.app.state.streams
    mine = streams.setdefault(whose, set())
    limit = request.app.state.settings.event_streams_per_user
    if len(mine) >= limit:
        log.warning("%s: refused an event stream, %d open already", whose, len(mine))
        raise HTTPException(
            429,
            f"{whose} has {len(mine)} event streams open, the most this site allows; close "
            "some (browser tabs showing a lab's progress) and try again.",
            headers={"Retry-After": "10"},
        )
    body = _sse(store, lab_id, after)
    mine.add(id(body))
    # forgotten when the stream ends, and when it is dropped without having begun
    weakref.finalize(body, mine.discard, id(body))
    return StreamingResponse(
        _counted(body, mine),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _counted(body: AsyncIterator[bytes], streams: set[int]) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        streams.discard(id(body))


async def _sse(store: Store, lab_id: str, after: int) -> AsyncIterator[bytes]:
    seq = after
    while True:
        waiter = store.notifier.waiter(lab_id)  # before reading, so no event slips by
        batch = await store.events(lab_id, seq)
        for ev in batch:
            seq = ev.seq
            data = event_out(ev).model_dump_json()
            yield f"id: {ev.seq}\nevent: lab\ndata: {data}\n\n".encode()
        if batch and batch[-1].state in FINAL:
            return
        if not batch:
            lab = await store.get_lab(lab_id)
            if lab is None or (lab.state in FINAL and lab.last_seq <= seq):
                return
        try:
            await asyncio.wait_for(waiter.wait(), HEARTBEAT_SECONDS)
        except TimeoutError:
            yield b": keep-alive\n\n"
