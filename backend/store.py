"""Labs and events in the database: the one place that writes them.

A transition is one transaction: the lab's state and sequence number move
only if the state is still the one the caller read (optimistic concurrency),
and the event with that sequence number is stored with it. Listeners are
woken after the commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import as_utc, events, labs, utcnow
from .states import ACTIVE, PROGRESS, InvalidTransition, LabState, can_move


@dataclass(frozen=True)
class Lab:
    id: str
    user_name: str
    server_name: str
    system: str
    vo: str | None
    options: dict[str, Any]
    state: LabState
    last_seq: int
    url: str | None
    handle: dict[str, Any]
    message: str
    created: datetime
    updated: datetime

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


@dataclass(frozen=True)
class Event:
    lab_id: str
    seq: int
    time: datetime
    progress: int
    state: LabState
    message: str
    detail: str = ""


class ServerNameBusy(Exception):
    """The user already has an active lab with this server name."""

    def __init__(self, existing: Lab | None):
        super().__init__("an active lab with this server name exists")
        self.existing = existing


def _lab(row: Any) -> Lab:
    return Lab(
        id=row.id,
        user_name=row.user_name,
        server_name=row.server_name,
        system=row.system,
        vo=row.vo,
        options=dict(row.options or {}),
        state=LabState(row.state),
        last_seq=row.last_seq,
        url=row.url,
        handle=dict(row.handle or {}),
        message=row.message,
        created=as_utc(row.created),
        updated=as_utc(row.updated),
    )


def _event(row: Any) -> Event:
    return Event(
        lab_id=row.lab_id,
        seq=row.seq,
        time=as_utc(row.time),
        progress=row.progress,
        state=LabState(row.state),
        message=row.message,
        detail=row.detail,
    )


@dataclass
class Notifier:
    """Wakes the readers of a lab's events when a new one is stored (in-process)."""

    _waiters: dict[str, asyncio.Event] = field(default_factory=dict)

    def waiter(self, lab_id: str) -> asyncio.Event:
        ev = self._waiters.get(lab_id)
        if ev is None or ev.is_set():
            ev = self._waiters[lab_id] = asyncio.Event()
        return ev

    def publish(self, lab_id: str) -> None:
        ev = self._waiters.pop(lab_id, None)
        if ev is not None:
            ev.set()


class Store:
    def __init__(self, engine: AsyncEngine, notifier: Notifier | None = None):
        self.engine = engine
        self.notifier = notifier or Notifier()

    async def create_lab(
        self,
        *,
        user_name: str,
        server_name: str,
        system: str,
        vo: str | None,
        options: dict[str, Any],
        message: str,
    ) -> Lab:
        lab_id = str(uuid.uuid4())
        now = utcnow()
        state = LabState.ACCEPTED
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(labs).values(
                        id=lab_id,
                        user_name=user_name,
                        server_name=server_name,
                        system=system,
                        vo=vo,
                        options=options,
                        state=state.value,
                        last_seq=1,
                        url=None,
                        handle={},
                        message=message,
                        created=now,
                        updated=now,
                    )
                )
                await conn.execute(
                    insert(events).values(
                        lab_id=lab_id,
                        seq=1,
                        time=now,
                        progress=PROGRESS[state],
                        state=state.value,
                        message=message,
                        detail="",
                    )
                )
        except IntegrityError:
            raise ServerNameBusy(await self.active_lab(user_name, server_name)) from None
        self.notifier.publish(lab_id)
        lab = await self.get_lab(lab_id)
        assert lab is not None
        return lab

    async def get_lab(self, lab_id: str) -> Lab | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(labs).where(labs.c.id == lab_id))).first()
        return _lab(row) if row else None

    async def active_lab(self, user_name: str, server_name: str) -> Lab | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(labs).where(
                        labs.c.user_name == user_name,
                        labs.c.server_name == server_name,
                        labs.c.state.in_([s.value for s in ACTIVE]),
                    )
                )
            ).first()
        return _lab(row) if row else None

    async def list_labs(
        self, *, user_name: str | None = None, active_only: bool = False
    ) -> list[Lab]:
        query = select(labs).order_by(labs.c.created)
        if user_name is not None:
            query = query.where(labs.c.user_name == user_name)
        if active_only:
            query = query.where(labs.c.state.in_([s.value for s in ACTIVE]))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_lab(r) for r in rows]

    async def events(self, lab_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        query = (
            select(events)
            .where(events.c.lab_id == lab_id, events.c.seq > after)
            .order_by(events.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_event(r) for r in rows]

    async def save_handle(self, lab_id: str, handle: dict[str, Any]) -> None:
        """Store what a driver needs to find the lab again after a restart."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(labs).where(labs.c.id == lab_id).values(handle=handle, updated=utcnow())
            )

    async def record(
        self,
        lab_id: str,
        state: LabState,
        message: str,
        *,
        detail: str = "",
        progress: int | None = None,
        url: str | None = None,
        allowed_from: Collection[LabState] | None = None,
    ) -> Lab:
        """Move a lab to ``state`` (or stay in it) and store the event.

        Raises InvalidTransition if the state machine forbids the move, or if
        ``allowed_from`` is given and the lab is in none of those states.
        """
        for _attempt in range(20):
            lab = await self.get_lab(lab_id)
            if lab is None:
                raise KeyError(lab_id)
            if not can_move(lab.state, state) or (
                allowed_from is not None and lab.state not in allowed_from
            ):
                raise InvalidTransition(lab.state, state)
            seq = lab.last_seq + 1
            now = utcnow()
            values: dict[str, Any] = {
                "state": state.value,
                "last_seq": seq,
                "message": message,
                "updated": now,
            }
            if url is not None:
                values["url"] = url
            async with self.engine.begin() as conn:
                moved = await conn.execute(
                    update(labs)
                    .where(
                        labs.c.id == lab_id,
                        labs.c.state == lab.state.value,
                        labs.c.last_seq == lab.last_seq,
                    )
                    .values(**values)
                )
                if moved.rowcount != 1:
                    continue  # somebody else moved it first: read again
                await conn.execute(
                    insert(events).values(
                        lab_id=lab_id,
                        seq=seq,
                        time=now,
                        progress=PROGRESS[state] if progress is None else progress,
                        state=state.value,
                        message=message,
                        detail=detail,
                    )
                )
            self.notifier.publish(lab_id)
            updated = await self.get_lab(lab_id)
            assert updated is not None
            return updated
        raise RuntimeError(f"lab {lab_id}: could not record {state} after repeated conflicts")
