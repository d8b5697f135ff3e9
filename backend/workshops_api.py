"""The workshops' HTTP API (paths under ``/api/v1/workshops``; see docs/reference.md)."""

from __future__ import annotations

import hmac
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .api import acting_user, identity_of, manager_of
from .auth import USER_NAME, Principal, authenticate
from .catalog import OptionError, catalog, validate_options
from .db import utcnow
from .settings import Settings
from .store import Lab, UserRecord
from .workshop_settings import WorkshopSettings
from .workshops import (
    WORKSHOP_ID,
    Workshop,
    WorkshopTaken,
    is_instructor,
    new_code,
    when,
)

log = logging.getLogger("lablink.backend.workshops")
router = APIRouter(prefix="/api/v1/workshops", tags=["workshops"])
Auth = Annotated[Principal, Depends(authenticate)]

TITLE = r"^[^\x00-\x1f\x7f]*$"  # one line: no control characters
DESCRIPTION = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"  # tab and newline allowed
PERSON = r"^[^\x00-\x20\x7f,;<>]{1,255}$"  # a user name or an e-mail address
LIMITS_VO = "workshop-limits"
NOT_FOUND = (
    "No workshop {id!r}, or the invitation's code is wrong; ask its organizers for the link."
)
ENDED = "The workshop {title} has ended; its invitation no longer works."
ONLY_INSTRUCTORS = (
    "Only the site's workshop instructors can create workshops; ask the site's support to "
    "make you one."
)
ONLY_ORGANIZERS = "Only the organizers of this workshop can do that."


class Refused(Exception):
    """A request refused with one sentence and the field it is about."""

    def __init__(self, status: int, detail: str, field: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field


def refused(exc: Refused) -> JSONResponse:
    body: dict[str, Any] = {"detail": exc.detail}
    if exc.field is not None and exc.status == 422:
        body["field"] = exc.field
    return JSONResponse(body, status_code=exc.status)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-12-04T09:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("give a time between the years 1 and 9999") from None


Person = Annotated[str, Field(pattern=PERSON, max_length=255)]
UserName = Annotated[str, Field(pattern=USER_NAME.pattern, max_length=128)]


class WorkshopChange(BaseModel):
    """What an organizer may change (each field optional)."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, min_length=1, max_length=200, pattern=TITLE)
    description: str | None = Field(default=None, max_length=2000, pattern=DESCRIPTION)
    start: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    end: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    max_participants: int | None = Field(default=None, ge=1, le=10000)
    participants: list[Person] | None = Field(
        default=None,
        max_length=10000,
        description="the allow-list: user names or e-mail addresses; null: anyone with the code",
    )
    tutors: list[UserName] | None = Field(default=None, max_length=100)

    @field_validator("start", "end")
    @classmethod
    def _zone(cls, value: datetime | None) -> datetime | None:
        return _utc(value) if value is not None else None

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give a title of at least one visible character")
        return value


class WorkshopIn(WorkshopChange):
    """A new workshop."""

    id: str = Field(
        pattern=WORKSHOP_ID,
        description="lower-case letters, digits and '-', 2 to 40, starting with a letter; "
        "also the name of the participants' servers",
    )
    title: str = Field(min_length=1, max_length=200, pattern=TITLE)  # type: ignore[assignment]
    description: str = Field(default="", max_length=2000, pattern=DESCRIPTION)  # type: ignore[assignment]
    start: datetime  # type: ignore[assignment]
    end: datetime  # type: ignore[assignment]
    system: str = Field(max_length=64)
    options: dict[str, Any] = Field(default_factory=dict, max_length=64)
    max_participants: int = Field(ge=1, le=10000)  # type: ignore[assignment]


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=64)


# -- helpers -----------------------------------------------------------------------


def site(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def workshop_settings(request: Request) -> WorkshopSettings:
    return site(request).workshops or WorkshopSettings()


async def may_create(request: Request, who: Principal) -> bool:
    if who.admin:
        return True
    if who.user is None:
        return False
    return is_instructor(site(request), await identity_of(request, who.user))


def same_code(given: str, code: str) -> bool:
    return hmac.compare_digest(given.encode(), code.encode())


def organizes(who: Principal, ws: Workshop) -> bool:
    return who.admin or ws.organized_by(who.user)


def iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


async def found(request: Request, workshop_id: str) -> Workshop:
    ws = (
        await manager_of(request).workshops.get(workshop_id)
        if re.fullmatch(WORKSHOP_ID, workshop_id)
        else None
    )
    if ws is None:
        raise Refused(404, NOT_FOUND.format(id=workshop_id[:64]))
    return ws


async def organized(request: Request, who: Principal, workshop_id: str) -> Workshop:
    ws = await found(request, workshop_id)
    if not organizes(who, ws):
        if who.user is not None and await manager_of(request).workshops.is_member(ws.id, who.user):
            raise Refused(403, ONLY_ORGANIZERS)
        raise Refused(404, NOT_FOUND.format(id=workshop_id[:64]))
    return ws


def admitted(ws: Workshop, name: str, record: UserRecord | None) -> bool:
    """Whether the allow-list lets this person in: by user name, or by one of their
    e-mail addresses the identity provider verified (case does not matter)."""
    if ws.allow is None:
        return True
    allowed = {a.lower() for a in ws.allow}
    mine = {name.lower(), *(record.emails if record is not None else ())}
    return bool(allowed & mine)


async def view(
    request: Request,
    ws: Workshop,
    role: str,
    member: bool,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The workshop JSON: organizer view, or the participant/invited view."""
    settings = site(request)
    now = utcnow()
    system = settings.systems.get(ws.system)
    store = manager_of(request).workshops
    joined = counts[ws.id] if counts is not None and ws.id in counts else await store.count(ws.id)
    out: dict[str, Any] = {
        "id": ws.id,
        "title": ws.title,
        "description": ws.description,
        "start": iso(ws.start),
        "end": iso(ws.end),
        "state": ws.state(now),
        "ended": iso(ws.ended),
        "system": ws.system,
        "system_display_name": (system.display_name or ws.system) if system else ws.system,
        "options": dict(ws.options),
        "choice_display_name": system.choice_name(ws.options) if system else None,
        "max_participants": ws.max_participants,
        "role": role,
        "member": member,
    }
    if role != "organizer":
        out["full"] = joined >= ws.max_participants
        return out
    limit = ws.lab_limit(workshop_settings(request).limits)
    out.update(
        joined=joined,
        labs={"used": await store.active_lab_count(ws.id), "limit": limit},
        owner=ws.owner,
        tutors=list(ws.tutors),
        participants=list(ws.allow) if ws.allow is not None else None,
        code=ws.code,
        invite_path=f"/hub/workshops/{ws.id}?code={ws.code}",
    )
    return out


def check_window(start: datetime, end: datetime, days: int, now: datetime) -> None:
    if end <= start:
        raise Refused(422, "The end must be after the start.", "end")
    if end <= now:
        raise Refused(422, f"The end, {when(end)}, has passed; give a later one.", "end")
    if end - start > timedelta(days=days):
        raise Refused(
            422,
            f"A workshop may last at most {days} days on this site; give an earlier end "
            "or a later start.",
            "end",
        )


def check_size(max_participants: int, most: int) -> None:
    if max_participants > most:
        raise Refused(
            422,
            f"A workshop may have at most {most} participants on this site.",
            "max_participants",
        )


def presets(settings: Settings, system: str, options: dict[str, Any], owner: str) -> dict[str, Any]:
    """The presets, checked against the site's limits and normalized by the kind's check
    (an account or project the check chose for the organizer is left out: each
    participant gets their own)."""
    limits = (settings.workshops or WorkshopSettings()).limits
    if system not in settings.systems:
        names = ", ".join(settings.systems)
        raise Refused(422, f"{system[:64]!r} is not a system of this site ({names}).", "system")
    if limits.systems is not None and system not in limits.systems:
        offered = ", ".join(settings.systems[s].display_name or s for s in limits.systems)
        shown = settings.systems[system].display_name or system
        raise Refused(
            422, f"Workshops may not use the system {shown}; they may use {offered}.", "system"
        )
    image = options.get("image")
    allowed_images = limits.images.get(system)
    if isinstance(image, str) and allowed_images is not None and image not in allowed_images:
        raise Refused(
            422,
            f"Workshops may use only the images {', '.join(allowed_images)} on this system.",
            "options.image",
        )
    bounded = settings.model_copy(update={"vos": {LIMITS_VO: limits.vo()}})
    try:
        _, clean = validate_options(bounded, {**options, "system": system}, owner, vo=LIMITS_VO)
    except OptionError as exc:
        sentence = exc.sentence.replace(" in VO the site's workshop limits", " for a workshop")
        raise Refused(422, sentence, f"options.{exc.field}") from None
    clean.pop("system", None)
    for key in ("account", "project"):
        if key not in options:
            clean.pop(key, None)
    return clean


# -- routes -----------------------------------------------------------------------


@router.get("")
async def list_workshops(
    request: Request, who: Auth, joined: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    """Organizers: the workshops they own or tutor (admins: all); ``joined=true``: those
    the person joined (participant view)."""
    store = manager_of(request).workshops
    if joined:
        user = acting_user(who)
        ids = set(await store.joined_ids(user))
        chosen = [ws for ws in await store.all() if ws.id in ids]
        counts = await store.member_counts([ws.id for ws in chosen])
        shown = [await view(request, ws, "participant", True, counts) for ws in chosen]
        return {"workshops": shown}
    everything = await store.all()
    chosen = [ws for ws in everything if organizes(who, ws)]
    counts = await store.member_counts([ws.id for ws in chosen])
    member = set(await store.joined_ids(who.user)) if who.user else set()
    return {
        "workshops": [
            await view(request, ws, "organizer", ws.id in member, counts) for ws in chosen
        ]
    }


@router.get("/limits")
async def get_limits(request: Request, who: Auth) -> dict[str, Any]:
    """What the create form offers: the site's limits and the systems cut to them."""
    allowed = await may_create(request, who)
    ws_site = workshop_settings(request)
    limits = ws_site.limits
    settings = site(request)
    bounded = settings.model_copy(update={"vos": {LIMITS_VO: limits.vo()}})
    offered = catalog(bounded, who.user or "", vo=LIMITS_VO)["systems"]
    for entry in offered:
        images = limits.images.get(entry["name"])
        if images is not None:
            entry["images"] = list(images)
    return {
        "may_create": allowed,
        "why_not": "" if allowed else ONLY_INSTRUCTORS,
        "max_participants": limits.participants,
        "max_days": limits.days,
        "max_labs": limits.labs,
        "grace": ws_site.grace,
        "systems": offered,
    }


@router.post("", status_code=201, response_model=None)
async def create_workshop(request: Request, body: WorkshopIn, who: Auth) -> Any:
    """Create a workshop (instructors and admins); answers the organizer view."""
    try:
        owner = acting_user(who)
        if not await may_create(request, who):
            raise Refused(403, ONLY_INSTRUCTORS)
        settings = site(request)
        limits = workshop_settings(request).limits
        if body.id in settings.vos:
            taken = f"{body.id!r} is the name of a VO of this site; choose another id."
            raise Refused(409, taken, "id")
        check_window(body.start, body.end, limits.days, utcnow())
        check_size(body.max_participants, limits.participants)
        options = presets(settings, body.system, body.options, owner)
        tutors = sorted(set(body.tutors or []) - {owner})
        try:
            ws = await manager_of(request).workshops.create(
                {
                    "id": body.id,
                    "title": body.title,
                    "description": body.description,
                    "owner": owner,
                    "tutors": tutors,
                    "start": body.start,
                    "end": body.end,
                    "system": body.system,
                    "options": options,
                    "max_participants": body.max_participants,
                    "allow": body.participants,
                    "code": new_code(),
                }
            )
        except WorkshopTaken:
            taken = f"A workshop {body.id!r} exists already; choose another id."
            raise Refused(409, taken, "id") from None
    except Refused as exc:
        return refused(exc)
    request.app.state.ender.wake()
    log.info("workshop %s created by %s", ws.id, owner)
    return JSONResponse(await view(request, ws, "organizer", False), status_code=201)


@router.get("/{workshop_id}", response_model=None)
async def get_workshop(
    request: Request,
    workshop_id: str,
    who: Auth,
    code: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    """Organizers and admins: the organizer view; members: the participant view; with
    the right ``code``: the invited view."""
    try:
        ws = await found(request, workshop_id)
        store = manager_of(request).workshops
        member = who.user is not None and await store.is_member(ws.id, who.user)
        if organizes(who, ws):
            return await view(request, ws, "organizer", member)
        if member:
            return await view(request, ws, "participant", True)
        if code is None or not same_code(code, ws.code):
            raise Refused(404, NOT_FOUND.format(id=workshop_id[:64]))
        if ws.state(utcnow()) == "ended":
            raise Refused(410, ENDED.format(title=ws.title))
        return await view(request, ws, "invited", False)
    except Refused as exc:
        return refused(exc)


@router.patch("/{workshop_id}", response_model=None)
async def patch_workshop(
    request: Request, workshop_id: str, body: WorkshopChange, who: Auth
) -> Any:
    """Change a workshop (organizers, admins); a later end reopens an ended one."""
    try:
        ws = await organized(request, who, workshop_id)
        limits = workshop_settings(request).limits
        given = body.model_dump(exclude_unset=True)
        values: dict[str, Any] = {}
        for key in ("title", "description", "max_participants"):
            if given.get(key) is not None:
                values[key] = given[key]
        if "participants" in given:
            values["allow"] = given["participants"]
        if given.get("tutors") is not None:
            values["tutors"] = sorted(set(given["tutors"]) - {ws.owner})
        if given.get("max_participants") is not None:
            check_size(given["max_participants"], limits.participants)
        start = given.get("start") or ws.start
        end = given.get("end") or ws.end
        if "start" in given or "end" in given:
            check_window(start, end, limits.days, utcnow())
            values.update(start=start, end=end)
            if end > utcnow():
                values["ended"] = None
        changed = await manager_of(request).workshops.patch(ws.id, values) if values else ws
    except Refused as exc:
        return refused(exc)
    request.app.state.ender.wake()
    store = manager_of(request).workshops
    member = who.user is not None and await store.is_member(ws.id, who.user)
    return await view(request, changed, "organizer", member)


@router.post("/{workshop_id}/code", response_model=None)
async def renew_code(request: Request, workshop_id: str, who: Auth) -> Any:
    """A new invitation code; the old one stops working."""
    try:
        ws = await organized(request, who, workshop_id)
    except Refused as exc:
        return refused(exc)
    changed = await manager_of(request).workshops.patch(ws.id, {"code": new_code()})
    return await view(request, changed, "organizer", False)


@router.post("/{workshop_id}/join", response_model=None)
async def join_workshop(request: Request, workshop_id: str, body: CodeIn, who: Auth) -> Any:
    """Join with the invitation's code; the workshop becomes the person's active VO."""
    try:
        user = acting_user(who)
        ws = await found(request, workshop_id)
        if not same_code(body.code, ws.code):
            raise Refused(404, NOT_FOUND.format(id=workshop_id[:64]), "code")
        if ws.state(utcnow()) == "ended":
            raise Refused(410, ENDED.format(title=ws.title))
        record = await manager_of(request).store.get_user(user)
        if not admitted(ws, user, record):
            raise Refused(
                403,
                f"The workshop {ws.title} is only for the people its organizers listed; you "
                f"are logged in as {user}. Ask them to add you.",
            )
        outcome = await manager_of(request).workshops.join(ws.id, user, ws.max_participants)
        if outcome == "already":
            raise Refused(409, f"You have already joined the workshop {ws.title}.")
        if outcome == "full":
            raise Refused(
                409,
                f"The workshop {ws.title} has all of its {ws.max_participants} places taken; "
                "ask its organizers.",
            )
    except Refused as exc:
        return refused(exc)
    await manager_of(request).store.set_active_vo(user, ws.id)
    log.info("workshop %s: %s joined", ws.id, user)
    return await view(request, ws, "participant", True)


def roster_lab(settings: Settings, lab: Lab | None, started: datetime | None) -> Any:
    if lab is None:
        return None
    system = settings.systems.get(lab.system)
    out: dict[str, Any] = {
        "id": lab.id,
        "server_name": lab.server_name,
        "state": lab.state.value,
        "system": lab.system,
        "system_display_name": (system.display_name or lab.system) if system else lab.system,
        "created": iso(lab.created),
        "started": iso(started),
    }
    if lab.url and lab.state.value == "running":
        out["url"] = lab.url
    return out


@router.get("/{workshop_id}/participants", response_model=None)
async def participants(request: Request, workshop_id: str, who: Auth) -> Any:
    """The roster: each participant with their newest lab in the workshop."""
    try:
        ws = await found(request, workshop_id)
        if not organizes(who, ws):
            raise Refused(403, "Only the organizers of this workshop can see its participants.")
    except Refused as exc:
        return refused(exc)
    manager = manager_of(request)
    roster = await manager.workshops.roster(ws.id)
    lab_ids = [e.lab.id for e in roster if e.lab is not None]
    times = await manager.store.lab_times(lab_ids)
    settings = site(request)
    return {
        "participants": [
            {
                "name": e.name,
                "joined": iso(e.joined),
                "lab": roster_lab(
                    settings, e.lab, times[e.lab.id].started if e.lab is not None else None
                ),
            }
            for e in roster
        ],
        "joined": len(roster),
        "max_participants": ws.max_participants,
        "labs": {
            "used": await manager.workshops.active_lab_count(ws.id),
            "limit": ws.lab_limit(workshop_settings(request).limits),
        },
    }


@router.delete("/{workshop_id}/participants/{name}", response_model=None)
async def remove_participant(request: Request, workshop_id: str, name: str, who: Auth) -> Any:
    """Remove a participant; their active labs in the workshop are stopped."""
    try:
        ws = await organized(request, who, workshop_id)
        manager = manager_of(request)
        if not USER_NAME.fullmatch(name) or not await manager.workshops.remove(ws.id, name):
            raise Refused(404, f"{name[:128]!r} is not a participant of the workshop {ws.title}.")
    except Refused as exc:
        return refused(exc)
    stopping = await manager.stop_workshop_labs(ws.id, name)
    record = await manager.store.get_user(name)
    if record is not None and record.vo == ws.id:
        await manager.store.set_active_vo(name, None)
    log.info("workshop %s: %s removed, stopping %d labs", ws.id, name, stopping)
    return {"removed": name, "stopping": stopping}


@router.post("/{workshop_id}/participants/{name}/stop", response_model=None)
async def stop_participant(request: Request, workshop_id: str, name: str, who: Auth) -> Any:
    """Stop one person's active labs in the workshop."""
    try:
        ws = await organized(request, who, workshop_id)
        if not USER_NAME.fullmatch(name):
            raise Refused(404, f"{name[:128]!r} is not a participant of the workshop {ws.title}.")
    except Refused as exc:
        return refused(exc)
    return {"stopping": await manager_of(request).stop_workshop_labs(ws.id, name)}


@router.post("/{workshop_id}/stop", response_model=None)
async def stop_all(request: Request, workshop_id: str, who: Auth) -> Any:
    """Stop every active lab of the workshop."""
    try:
        ws = await organized(request, who, workshop_id)
    except Refused as exc:
        return refused(exc)
    stopping = await manager_of(request).stop_workshop_labs(ws.id)
    log.info("workshop %s: stop all: stopping %d labs", ws.id, stopping)
    return {"stopping": stopping}
