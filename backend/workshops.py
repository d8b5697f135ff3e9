"""Workshops: organizers give a room of people a VO, presets and a time window.

The site file says who may organize (``workshops.instructors``) and what one
workshop may hand out at most (``workshops.limits``); workshops themselves are
rows of the database. For the rest of the backend a workshop *is a VO*: a
person's VOs are the site's VOs they are in plus the workshops they joined or
organize (see :func:`person_settings`), so the catalog, the form's check and
atomic admission apply unchanged. A background task (:class:`WorkshopEnder`)
stops a workshop's labs at its end plus the site's grace.

Example of the site file's part::

    workshops:
      instructors: {users: [demo], groups: [teachers]}
      grace: 15
      limits: {participants: 100, days: 7, systems: [hpc], partitions: {hpc: [devel]},
               per_lab: {runtime: 120}}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import as_utc, labs, utcnow, workshop_members, workshops
from .vos import Identity, Members, Quota, VOSettings
from .workshop_settings import WorkshopLimits, WorkshopSettings

if TYPE_CHECKING:
    from .settings import Settings

# a write transaction: Store.writing (immediate=..., urgent=...)
Writing = Callable[..., AbstractAsyncContextManager[AsyncConnection]]

log = logging.getLogger("lablink.backend.workshops")

WORKSHOP_ID = r"^[a-z][a-z0-9-]{1,39}$"


# -- a workshop --------------------------------------------------------------------


@dataclass(frozen=True)
class Workshop:
    id: str
    title: str
    description: str
    owner: str
    tutors: list[str]
    start: datetime
    end: datetime
    system: str
    options: dict[str, Any]
    max_participants: int
    allow: list[str] | None
    code: str
    created: datetime
    updated: datetime
    ended: datetime | None

    def organized_by(self, user: str | None) -> bool:
        return user is not None and (user == self.owner or user in self.tutors)

    def state(self, now: datetime) -> str:
        if self.ended is not None or now >= self.end:
            return "ended"
        return "upcoming" if now < self.start else "open"

    def lab_limit(self, limits: WorkshopLimits) -> int:
        return limits.labs or self.max_participants + 1 + len(self.tutors)


def when(t: datetime) -> str:
    """A time as people read it in a sentence: 09:00 UTC on 4 December."""
    return f"{t:%H:%M} UTC on {t.day} {t:%B}"


def window_refusal(ws: Workshop, now: datetime) -> str | None:
    """Why a lab of this workshop cannot start now, or None."""
    if now < ws.start:
        return f"The workshop {ws.title} opens at {when(ws.start)}; you can start your lab then."
    if ws.ended is not None or now >= ws.end:
        return f"The workshop {ws.title} ended at {when(ws.end)}; ask its organizers to extend it."
    return None


def workshop_vo(ws: Workshop, limits: WorkshopLimits, settings: Settings) -> VOSettings:
    """The VO a workshop is for the backend: its members are the people given."""
    per = limits.per_lab
    preset = ws.options

    def pick(key: str) -> Any:
        value = preset.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    choices: dict[str, dict[str, list[str]]] = {"partitions": {}, "flavors": {}}
    system = settings.systems.get(ws.system)
    known = system.vo_choices() if system is not None else {}
    for key, option in (("partitions", "partition"), ("flavors", "flavor")):
        if key in known and isinstance(preset.get(option), str):
            choices[key][ws.system] = [preset[option]]
    quota = Quota(
        labs=ws.lab_limit(limits),
        labs_per_user=1,
        runtime=pick("runtime") or per.runtime,
        nodes=pick("nodes") or per.nodes,
        gpus=pick("gpus") if pick("gpus") is not None else per.gpus,
        cpu=pick("cpu") or per.cpu,
        memory=pick("memory") or per.memory,
    )
    return VOSettings.model_construct(
        display_name=ws.title,
        description=ws.description.split("\n", 1)[0][:200],
        members=Members(),
        systems=[ws.system],
        partitions=choices["partitions"],
        flavors=choices["flavors"],
        quota=quota,
    )


def _workshop(row: Any) -> Workshop:
    return Workshop(
        id=row.id,
        title=row.title,
        description=row.description,
        owner=row.owner,
        tutors=list(row.tutors or []),
        start=as_utc(row.start),
        end=as_utc(row.end),
        system=row.system,
        options=dict(row.options or {}),
        max_participants=row.max_participants,
        allow=list(row.allow) if row.allow is not None else None,
        code=row.code,
        created=as_utc(row.created),
        updated=as_utc(row.updated),
        ended=as_utc(row.ended) if row.ended is not None else None,
    )


workshop_from_row = _workshop


def new_code() -> str:
    return secrets.token_urlsafe(16)


class WorkshopTaken(Exception):
    """A workshop with this id exists already."""


def _lock_key(workshop_id: str) -> int:
    digest = hashlib.blake2b(f"lablink-workshop:{workshop_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class RosterEntry:
    name: str
    joined: datetime
    lab: Any  # store.Lab | None: the newest lab of the person in the workshop


class WorkshopStore:
    """Workshops and their members in the database."""

    def __init__(self, engine: AsyncEngine, writing: Writing | None = None):
        self.engine = engine
        self.dialect = engine.dialect.name
        # the write transactions: the lab store's (on SQLite its writers take turns in
        # the process; a hundred joins at once waited seconds in SQLite's busy handler)
        if writing is None:
            from .store import Store

            writing = Store(engine).writing
        self.writing: Writing = writing

    async def create(self, values: dict[str, Any]) -> Workshop:
        now = utcnow()
        row = {**values, "created": now, "updated": now, "ended": None}
        try:
            async with self.writing(urgent=True) as conn:
                await conn.execute(insert(workshops).values(**row))
        except IntegrityError:
            raise WorkshopTaken(values["id"]) from None
        found = await self.get(values["id"])
        assert found is not None
        return found

    async def get(self, workshop_id: str) -> Workshop | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(workshops).where(workshops.c.id == workshop_id))
            ).first()
        return _workshop(row) if row else None

    async def titles(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        query = select(workshops.c.id, workshops.c.title).where(workshops.c.id.in_(ids))
        async with self.engine.connect() as conn:
            return {r[0]: r[1] for r in (await conn.execute(query)).all()}

    async def all(self, *, open_only: bool = False) -> list[Workshop]:
        query = select(workshops).order_by(workshops.c.start, workshops.c.id)
        if open_only:
            query = query.where(workshops.c.ended.is_(None))
        async with self.engine.connect() as conn:
            return [_workshop(r) for r in (await conn.execute(query)).all()]

    async def joined_ids(self, user: str) -> list[str]:
        query = select(workshop_members.c.workshop_id).where(workshop_members.c.user_name == user)
        async with self.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def of_person(self, user: str) -> list[Workshop]:
        """The workshops not ended that ``user`` joined or organizes (one query)."""
        query = (
            select(workshops, workshop_members.c.user_name.label("member"))
            .outerjoin(
                workshop_members,
                (workshop_members.c.workshop_id == workshops.c.id)
                & (workshop_members.c.user_name == user),
            )
            .where(workshops.c.ended.is_(None))
            .order_by(workshops.c.start, workshops.c.id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [(_workshop(r), r.member is not None) for r in rows]
        return [ws for ws, joined in found if joined or ws.organized_by(user)]

    async def patch(self, workshop_id: str, values: dict[str, Any]) -> Workshop:
        async with self.writing(urgent=True) as conn:
            await conn.execute(
                update(workshops)
                .where(workshops.c.id == workshop_id)
                .values(**values, updated=utcnow())
            )
        found = await self.get(workshop_id)
        assert found is not None
        return found

    async def count(self, workshop_id: str, conn: AsyncConnection | None = None) -> int:
        query = select(func.count()).where(workshop_members.c.workshop_id == workshop_id)
        if conn is not None:
            return int((await conn.execute(query)).scalar() or 0)
        async with self.engine.connect() as own:
            return int((await own.execute(query)).scalar() or 0)

    async def join(self, workshop_id: str, user: str, max_participants: int) -> str:
        """Add ``user`` under the workshop's lock: "joined", "already" or "full"."""
        async with self.writing(immediate=True, urgent=True) as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": _lock_key(workshop_id)},
                )
            there = (
                await conn.execute(
                    select(workshop_members.c.user_name).where(
                        workshop_members.c.workshop_id == workshop_id,
                        workshop_members.c.user_name == user,
                    )
                )
            ).first()
            if there is not None:
                return "already"
            if await self.count(workshop_id, conn) >= max_participants:
                return "full"
            await conn.execute(
                insert(workshop_members).values(
                    workshop_id=workshop_id, user_name=user, joined=utcnow()
                )
            )
        return "joined"

    async def is_member(self, workshop_id: str, user: str) -> bool:
        query = select(workshop_members.c.user_name).where(
            workshop_members.c.workshop_id == workshop_id, workshop_members.c.user_name == user
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def remove(self, workshop_id: str, user: str) -> bool:
        async with self.writing(urgent=True) as conn:
            gone = await conn.execute(
                delete(workshop_members).where(
                    workshop_members.c.workshop_id == workshop_id,
                    workshop_members.c.user_name == user,
                )
            )
        return bool(gone.rowcount)

    async def roster(self, workshop_id: str) -> list[RosterEntry]:
        """Each participant with their newest lab in the workshop (two queries)."""
        from .store import _lab

        members = (
            select(workshop_members.c.user_name, workshop_members.c.joined)
            .where(workshop_members.c.workshop_id == workshop_id)
            .order_by(workshop_members.c.joined, workshop_members.c.user_name)
        )
        their_labs = (
            select(labs)
            .where(labs.c.vo == workshop_id)
            .order_by(labs.c.user_name, labs.c.created.desc())
        )
        async with self.engine.connect() as conn:
            people = (await conn.execute(members)).all()
            newest: dict[str, Any] = {}
            for row in (await conn.execute(their_labs)).all():
                newest.setdefault(row.user_name, _lab(row))
        return [RosterEntry(r[0], as_utc(r[1]), newest.get(r[0])) for r in people]

    async def mark_ended(self, workshop_id: str, at: datetime) -> bool:
        """Mark the workshop ended unless it is already; whether this call marked it
        (with several replicas, exactly one of them does)."""
        async with self.writing(urgent=True) as conn:
            done = await conn.execute(
                update(workshops)
                .where(workshops.c.id == workshop_id, workshops.c.ended.is_(None))
                .values(ended=at, updated=at)
            )
        return bool(done.rowcount)

    async def active_lab_count(self, workshop_id: str) -> int:
        from .store import ACTIVE_STATES

        query = select(func.count()).where(
            labs.c.vo == workshop_id, labs.c.state.in_(ACTIVE_STATES)
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def member_counts(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        query = (
            select(workshop_members.c.workshop_id, func.count())
            .where(workshop_members.c.workshop_id.in_(ids))
            .group_by(workshop_members.c.workshop_id)
        )
        async with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in (await conn.execute(query)).all()}


# -- a person's VOs --------------------------------------------------------------


@dataclass(frozen=True)
class PersonView:
    """The site's settings as one person sees them: ``settings.vos`` holds the site's
    VOs and the person's workshops as VOs (members: the person, where they are one)."""

    settings: Settings
    workshops: dict[str, Workshop]


async def person_settings(
    settings: Settings, store: WorkshopStore | None, identity: Identity
) -> PersonView:
    if store is None or not identity.user:
        return PersonView(settings, {})
    mine = await store.of_person(identity.user)
    if not mine:
        return PersonView(settings, {})
    ws_settings = settings.workshops or WorkshopSettings()
    vos = dict(settings.vos)
    for ws in mine:
        if ws.id in vos:  # a site VO's name wins (creation refuses it)
            continue
        vo = workshop_vo(ws, ws_settings.limits, settings)
        vos[ws.id] = vo.model_copy(update={"members": Members(users=[identity.user])})
    return PersonView(settings.model_copy(update={"vos": vos}), {ws.id: ws for ws in mine})


def is_instructor(settings: Settings, identity: Identity) -> bool:
    site = settings.workshops
    if site is None:
        return False
    return VOSettings(members=site.instructors).admits(identity)


# -- the end ---------------------------------------------------------------------


class WorkshopEnder:
    """Stops each workshop's labs at its end plus the site's grace, and marks it ended;
    on start, it ends the workshops whose time passed while the backend was down."""

    MOST_SLEEP = 30.0

    def __init__(
        self,
        store: WorkshopStore,
        grace_minutes: int,
        stop_labs: Callable[[str], Awaitable[int]],
    ):
        self.store = store
        self.grace = timedelta(minutes=grace_minutes)
        self.stop_labs = stop_labs
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="workshop-ender")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def end_due(self) -> float:
        """End every workshop that is due; the seconds until the next one is."""
        now = utcnow()
        wait = self.MOST_SLEEP
        for ws in await self.store.all(open_only=True):
            due = ws.end + self.grace
            if due <= now:
                # the replica that marks it ends it; the others see it ended and pass
                if await self.store.mark_ended(ws.id, utcnow()):
                    stopping = await self.stop_labs(ws.id)
                    log.info("workshop %s ended: stopping %d labs", ws.id, stopping)
            else:
                wait = min(wait, (due - now).total_seconds())
        return max(wait, 0.05)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.end_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away for a moment: try again
                log.warning("ending workshops failed, trying again: %s", exc)
                wait = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
