"""Labs and events in the database: the one place that writes them.

A transition is one transaction: the lab's state and sequence number move
only if the state is still the one the caller read (optimistic concurrency),
and the event with that sequence number is stored with it. Listeners are
woken after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .bus import Bus
from .db import (
    ACTIVE_CONDITION,
    IMMEDIATE,
    as_utc,
    events,
    lab_secrets,
    labs,
    replicas,
    users,
    utcnow,
)
from .lab_secrets import LabSecrets
from .sealed import Sealer
from .states import ACTIVE, PROGRESS, InvalidTransition, LabState, can_move

log = logging.getLogger("lablink.backend.store")

# control characters other than tab and newline; NUL is refused by PostgreSQL
_CONTROL = {c: None for c in (*range(0, 9), *range(11, 32), 127)}
_CONTROL[ord("\r")] = None


def clean_text(text: str) -> str:
    """Text a lab or a peer produced, fit to store: without NUL and other control
    characters (tab and newline stay), and valid UTF-8 (a lone surrogate, from bytes
    decoded with ``surrogateescape``, becomes U+FFFD)."""
    if text.isprintable():
        return text
    cleaned = text.translate(_CONTROL)
    try:
        raw = cleaned.encode("utf-8", "surrogateescape")  # the bytes behind escapes
    except UnicodeEncodeError:
        raw = cleaned.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def clean_json(value: Any) -> Any:
    """``value`` with every string in it (keys too) passed through :func:`clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


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
    request_id: str | None = None  # the start request's Idempotency-Key
    owner: str | None = None  # the replica that follows the lab (None: nobody yet)

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


@dataclass(frozen=True)
class LabTimes:
    """What the list of a person's labs shows beside each lab: when it began to run
    (None: not yet), and, for a failed lab, its final event's detail (its last output)."""

    started: datetime | None
    failure_detail: str = ""


@dataclass(frozen=True)
class UserRecord:
    """What the hub last told of a person, and the VO they chose."""

    name: str
    groups: frozenset[str] = frozenset()
    entitlements: frozenset[str] = frozenset()
    vo: str | None = None
    emails: frozenset[str] = frozenset()  # verified, in lower case


@dataclass(frozen=True)
class Admission:
    """The limits a new lab is admitted against: its VO's (None: no limit)."""

    vo: str
    labs: int | None
    labs_per_user: int | None


@dataclass(frozen=True)
class Usage:
    """Active labs of a VO, and of one person in it."""

    labs: int
    user_labs: int


class QuotaExceeded(Exception):
    """Admitting the lab would pass a limit of its VO; nothing was stored."""

    def __init__(self, admission: Admission, limit: str, usage: Usage):
        super().__init__(f"VO {admission.vo}: {limit} reached")
        self.admission = admission
        self.limit = limit  # "labs" or "labs_per_user"
        self.usage = usage


class ServerNameBusy(Exception):
    """The user already has an active lab with this server name."""

    def __init__(self, existing: Lab | None):
        super().__init__("an active lab with this server name exists")
        self.existing = existing


class AdmissionFailed(Exception):
    """The transaction that was to admit the lab failed (the database's error, for
    example an unreachable database); nothing was stored."""

    def __init__(self, cause: str):
        super().__init__(f"the lab could not be stored: {cause}")
        self.cause = cause


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
        request_id=row.request_id,
        owner=row.owner,
    )


lab_from_row = _lab


class NotOwner(BaseException):
    """A fenced write found the lab followed by another replica now: the task that
    wrote ends quietly. A BaseException like a cancel, so that no ``except
    Exception`` of a driver or of the manager acts on a lab it no longer follows."""

    def __init__(self, lab_id: str):
        super().__init__(f"lab {lab_id} is followed by another replica")
        self.lab_id = lab_id


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

    def publish_all(self, _why: str = "") -> None:
        """Wake every reader (notifications may have been missed: they read again)."""
        waiters, self._waiters = self._waiters, {}
        for ev in waiters.values():
            ev.set()


def _lock_key(vo: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory lock of one VO."""
    digest = hashlib.blake2b(f"lablink-vo:{vo}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


ACTIVE_STATES = [s.value for s in ACTIVE]


class WriteTurns:
    """Writers take turns, one at a time; a writer a person waits for (``urgent``: the
    admission of a start) goes before the background writers that wait (the events of
    labs already starting), so a burst's answers do not queue behind its labs' events."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    @contextlib.asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        if self._held:
            turn = asyncio.get_running_loop().create_future()
            queue = self._waiting[0 if urgent else 1]
            queue.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_on()  # the turn came with the cancel: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        queue.remove(turn)
                raise
        else:
            self._held = True
        try:
            yield
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        for queue in self._waiting:
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # still held: by that writer now
                    return
        self._held = False


@dataclass(eq=False)
class _Start:
    """A lab waiting for its admission, and what its caller will get."""

    lab_id: str
    user_name: str
    server_name: str
    system: str
    vo: str | None
    options: dict[str, Any]
    message: str | Callable[[Usage | None], str]
    admission: Admission | None
    identity: dict[str, Any] | None  # what to store of the person (identity_change)
    # the lab stored, None for a taken server name (ServerNameBusy), or the exception
    outcome: asyncio.Future[Lab | None]
    refusal: QuotaExceeded | None = None
    request_id: str | None = None  # the start request's Idempotency-Key
    secret: dict[str, Any] | None = None  # its sealed lab_secrets row (LabSecrets.rows)


class _NameTakenMeanwhile(Exception):
    """Another process stored an active lab with a server name a batch was admitting."""


class _Counts:
    """Active labs of each VO and of each person in it, within one admission
    transaction: read once per VO, then kept in memory with the batch's labs added."""

    def __init__(self, conn: AsyncConnection):
        self._conn = conn
        self._people: dict[str, dict[str, int]] = {}  # VO -> person -> active labs
        self._total: dict[str, int] = {}  # VO -> active labs

    async def usage(self, vo: str, user_name: str) -> Usage:
        people = self._people.get(vo)
        if people is None:
            query = (
                select(labs.c.user_name, func.count())
                .where(labs.c.vo == vo, labs.c.state.in_(ACTIVE_STATES))
                .group_by(labs.c.user_name)
            )
            rows = (await self._conn.execute(query)).all()
            people = self._people[vo] = {r[0]: int(r[1]) for r in rows}
            self._total[vo] = sum(people.values())
        return Usage(labs=self._total[vo], user_labs=people.get(user_name, 0))

    def add(self, vo: str | None, user_name: str) -> None:
        """Count a lab the batch admits."""
        people = self._people.get(vo) if vo is not None else None
        if vo is not None and people is not None:
            people[user_name] = people.get(user_name, 0) + 1
            self._total[vo] += 1


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        notifier: Notifier | None = None,
        sealer: Sealer | None = None,
        bus: Bus | None = None,
    ):
        self.engine = engine
        self.notifier = notifier or Notifier()
        # this process's replica id (backend/replicas.py): the owner of the labs it
        # admits; None without replicas (a store used alone)
        self.replica_id: str | None = None
        # other replicas learn of each event through the bus (PostgreSQL NOTIFY, sent in
        # the transaction that stores it); this process wakes its streams after commit
        self.bus = bus
        # told of each transition this process stores (before, after, reason): the
        # transition's log line and the metrics (backend/observe.py); never raises
        self.on_moved: Callable[[Lab, Lab, str], None] | None = None
        self.dialect = engine.dialect.name
        # SQLite has one write lock per database: writers of this process take turns
        # here instead of in SQLite's busy handler, which sleeps in steps of up to
        # 100 ms (a burst of 100 starts waited seconds there)
        self._writer = WriteTurns() if self.dialect == "sqlite" else None
        # starts waiting for their admission, and the task admitting them (create_lab)
        self._starts: list[_Start] = []
        self._admitter: asyncio.Task[None] | None = None
        # what a lab's start needs, sealed (nothing stored without a sealer)
        self.secrets = LabSecrets(engine, self.writing, sealer)

    @contextlib.asynccontextmanager
    async def writing(
        self, immediate: bool = False, urgent: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A write transaction (committed at the end). ``immediate``: on SQLite it
        begins with the write lock taken (reads in it see every write before it);
        ``urgent``: a person waits for it (it goes before background writes)."""
        if self._writer is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._writer.turn(urgent), self.engine.connect() as conn:
            if immediate:
                conn = await conn.execution_options(**{IMMEDIATE: True})
            async with conn.begin():
                yield conn

    # -- people ------------------------------------------------------------------

    async def get_user(self, name: str) -> UserRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
        if row is None:
            return None
        return UserRecord(
            name=row.name,
            groups=frozenset(row.groups or ()),
            entitlements=frozenset(row.entitlements or ()),
            vo=row.vo,
            emails=frozenset(row.emails or ()),
        )

    def _user_upsert(self, name: str, values: dict[str, Any]) -> Any:
        """The statement that stores ``values`` of a person (a new one: with the rest empty)."""
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        row: dict[str, Any] = {
            "name": name,
            "groups": [],
            "entitlements": [],
            "emails": [],
            "vo": None,
        }
        row.update(values, updated=now)
        stmt = dialect_insert(users).values(**row)
        return stmt.on_conflict_do_update(
            index_elements=[users.c.name], set_={**values, "updated": now}
        )

    async def _upsert_user(self, name: str, values: dict[str, Any]) -> UserRecord:
        async with self.writing(urgent=True) as conn:
            await conn.execute(self._user_upsert(name, values))
        found = await self.get_user(name)
        assert found is not None
        return found

    @staticmethod
    def identity_change(
        known: UserRecord | None,
        groups: Collection[str],
        entitlements: Collection[str],
        emails: Collection[str] | None = None,
    ) -> dict[str, Any] | None:
        """What to store of a person's identity as the hub says it now (see
        :meth:`put_identity`; ``known``: as stored), or None when it is the same."""
        addresses = frozenset(e.lower() for e in emails) if emails is not None else None
        if (
            known is not None
            and known.groups == frozenset(groups)
            and known.entitlements == frozenset(entitlements)
            and (addresses is None or known.emails == addresses)
        ):
            return None
        values: dict[str, Any] = {
            "groups": sorted(set(groups)),
            "entitlements": sorted(set(entitlements)),
        }
        if addresses is not None:
            values["emails"] = sorted(addresses)
        return values

    async def put_identity(
        self,
        name: str,
        groups: Collection[str],
        entitlements: Collection[str],
        emails: Collection[str] | None = None,
    ) -> UserRecord:
        """Store what the hub says of a person now (their chosen VO stays; ``emails``
        None: the stored ones stay); a write only when it changed (each start tells it
        again)."""
        known = await self.get_user(name)
        values = self.identity_change(known, groups, entitlements, emails)
        if values is None:
            assert known is not None
            return known
        return await self._upsert_user(name, values)

    async def set_active_vo(self, name: str, vo: str | None) -> UserRecord:
        return await self._upsert_user(name, {"vo": vo})

    # -- labs --------------------------------------------------------------------

    async def usage(self, vo: str, user_name: str, conn: AsyncConnection | None = None) -> Usage:
        """Active labs of ``vo``, and of ``user_name`` in it."""
        active = labs.c.state.in_(ACTIVE_STATES)
        query = select(
            func.count(),
            func.coalesce(func.sum(case((labs.c.user_name == user_name, 1), else_=0)), 0),
        ).where(labs.c.vo == vo, active)
        if conn is not None:
            row = (await conn.execute(query)).one()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(query)).one()
        return Usage(labs=int(row[0]), user_labs=int(row[1]))

    async def create_lab(
        self,
        *,
        user_name: str,
        server_name: str,
        system: str,
        vo: str | None,
        options: dict[str, Any],
        message: str | Callable[[Usage | None], str],
        admission: Admission | None = None,
        identity: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        access_token: str | None = None,
        request_id: str | None = None,
    ) -> Lab:
        """Store a new lab (state ``accepted``) and its first event.

        With ``admission``, the lab is counted against its VO's limits first, so
        that concurrent requests never admit more than the limits allow; a
        callable ``message`` is given the VO's usage with the new lab counted.
        ``identity``: what to store of the person first (:meth:`identity_change`;
        stored whether the lab is admitted or not). ``env`` and ``access_token``: stored
        sealed with the lab (:class:`LabSecrets`; not at all without the site's key);
        ``request_id``: the start request's Idempotency-Key. Raises QuotaExceeded or
        ServerNameBusy, or AdmissionFailed when the transaction failed; no lab is
        stored then.

        Starts that arrive while an admission transaction runs are admitted
        together in the next one (group commit, see :meth:`_admit_batch`); a
        lone start has its transaction at once.
        """
        lab_id = str(uuid.uuid4())
        start = _Start(
            lab_id=lab_id,
            user_name=user_name,
            server_name=server_name,
            system=system,
            vo=vo,
            options=options,
            message=message,
            admission=admission,
            identity=identity,
            outcome=asyncio.get_running_loop().create_future(),
            request_id=request_id,
            # sealed here, before the admission's turn (the sealing takes CPU, not the lock)
            secret=self.secrets.rows(lab_id, env or {}, access_token),
        )
        self._starts.append(start)
        admitter = self._admitter
        if (
            admitter is None
            or admitter.done()
            or admitter.get_loop() is not start.outcome.get_loop()
        ):
            self._admitter = asyncio.create_task(self._admit_queued(), name="lab-admission")
        lab = await start.outcome
        if lab is None:  # the unique index: an active lab with this server name exists
            raise ServerNameBusy(await self.active_lab(user_name, server_name))
        return lab

    async def _admit_queued(self) -> None:
        """Admit the waiting starts, a batch per transaction, until none waits."""
        try:
            while self._starts:
                await self._admit_batch()
        finally:  # ends early only when cancelled (the loop closes): nobody waits in vain
            for start in self._take_starts():
                start.outcome.cancel()

    async def _admit_batch(self) -> None:
        """One transaction for every start waiting when it begins, in arrival order.

        The VOs' limits are taken first (SQLite: the transaction begins IMMEDIATE and
        holds the one write lock; PostgreSQL: each VO's advisory lock, in key order so
        that two replicas never wait for each other); then the VOs' usage and the
        active labs of the batch's people are read, each start is decided in memory in
        arrival order as if they came one by one (its VO's limits with the labs before
        it counted, then its server name), and the admitted labs and their first events
        are inserted together: a fixed number of statements for any number of starts.
        If the transaction fails, every start of the batch gets its error.
        """
        batch: list[_Start] | None = None
        try:
            for _attempt in range(10):
                try:
                    async with self.writing(immediate=True, urgent=True) as conn:
                        if batch is None:
                            batch = [s for s in self._take_starts() if not s.outcome.done()]
                        stored = await self._admit_in(conn, batch)
                    break
                except _NameTakenMeanwhile:
                    continue  # rolled back: read again
            else:
                raise RuntimeError("other writers took the same server names repeatedly")
        except BaseException as exc:
            failed = batch if batch is not None else self._take_starts()
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            for start in failed:
                if not start.outcome.done():
                    # each caller its own exception (one shared would gather tracebacks)
                    error = AdmissionFailed(cause)
                    error.__cause__ = exc
                    start.outcome.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            log.warning("the admission of %d labs failed: %s", len(failed), cause)
            return
        withdrawn = []
        for start in batch:
            lab = stored.get(start.lab_id)
            if lab is not None:
                self.notifier.publish(lab.id)
            if start.outcome.done():  # its caller gave up waiting: nobody will start it
                if lab is not None:
                    withdrawn.append(lab.id)
            elif lab is not None:
                start.outcome.set_result(lab)
            elif start.refusal is not None:
                start.outcome.set_exception(start.refusal)
            else:
                start.outcome.set_result(None)  # ServerNameBusy, raised by the caller
        if withdrawn:
            try:
                async with self.writing(urgent=True) as conn:
                    await conn.execute(delete(events).where(events.c.lab_id.in_(withdrawn)))
                    await conn.execute(delete(labs).where(labs.c.id.in_(withdrawn)))
            except Exception as exc:  # they stay accepted; a restart of the backend takes them up
                log.warning(
                    "could not remove %d labs whose start was withdrawn: %s", len(withdrawn), exc
                )

    async def _admit_in(self, conn: AsyncConnection, batch: list[_Start]) -> dict[str, Lab]:
        """Admit ``batch`` in the transaction of ``conn``: the labs stored, by id (each
        refused start has its ``refusal``, or None for a taken server name). Raises
        _NameTakenMeanwhile when a writer outside this process took one of the names
        after it was read (the transaction is to be rolled back and tried again)."""
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        if self.dialect == "postgresql":
            vos = {s.admission.vo for s in batch if s.admission is not None}
            for key in sorted(_lock_key(vo) for vo in vos):
                # admissions of a VO, here or in another replica, wait here
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        await self._store_identities(conn, batch)
        counted = _Counts(conn)
        people = sorted({s.user_name for s in batch})
        taken = {
            (r[0], r[1])
            for r in await conn.execute(
                select(labs.c.user_name, labs.c.server_name).where(
                    labs.c.user_name.in_(people), labs.c.state.in_(ACTIVE_STATES)
                )
            )
        }
        now = utcnow()
        rows: list[dict[str, Any]] = []
        sealed: list[dict[str, Any]] = []
        for start in batch:  # as if one after the other: the same answers, in order
            start.refusal = None
            try:
                usage = await self._count(counted, start)
            except QuotaExceeded as exc:
                start.refusal = exc
                continue
            if (start.user_name, start.server_name) in taken:
                continue  # the unique index would refuse it: ServerNameBusy
            taken.add((start.user_name, start.server_name))
            message = start.message(usage) if callable(start.message) else start.message
            rows.append(
                {
                    "id": start.lab_id,
                    "user_name": start.user_name,
                    "server_name": start.server_name,
                    "system": start.system,
                    "vo": start.vo,
                    "options": start.options,
                    "state": LabState.ACCEPTED.value,
                    "last_seq": 1,
                    "url": None,
                    "handle": {},
                    "message": message,
                    "created": now,
                    "updated": now,
                    "request_id": start.request_id,
                    "owner": self.replica_id,
                }
            )
            if start.secret is not None:
                sealed.append(start.secret)
            counted.add(start.vo, start.user_name)
        if not rows:
            return {}
        insert_labs = (
            dialect_insert(labs)
            .on_conflict_do_nothing(
                index_elements=[labs.c.user_name, labs.c.server_name],
                index_where=text(ACTIVE_CONDITION),
            )
            .returning(*labs.c)
        )
        stored = {r.id: _lab(r) for r in await conn.execute(insert_labs, rows)}
        if len(stored) < len(rows):
            # another process stored an active lab with one of these names after the
            # read above (PostgreSQL with several backends): read again from the start
            raise _NameTakenMeanwhile
        progress = PROGRESS[LabState.ACCEPTED]
        await conn.execute(
            insert(events),
            [
                {
                    "lab_id": row["id"],
                    "seq": 1,
                    "time": now,
                    "progress": progress,
                    "state": LabState.ACCEPTED.value,
                    "message": row["message"],
                    "detail": "",
                }
                for row in rows
            ],
        )
        if sealed:
            await conn.execute(insert(lab_secrets), sealed)
        if self.bus is not None:
            await self.bus.in_transaction_all(conn, "event", [row["id"] for row in rows])
        return stored

    async def _store_identities(self, conn: AsyncConnection, batch: list[_Start]) -> None:
        """Store what the hub said of the batch's people (the newest of each person),
        before their labs (and whether or not those are admitted)."""
        newest = {s.user_name: s.identity for s in batch if s.identity is not None}
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for name, values in newest.items():
            shapes.setdefault(tuple(sorted(values)), []).append({"name": name, **values})
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        for keys, people in shapes.items():
            stmt = dialect_insert(users).values(
                groups=[], entitlements=[], emails=[], vo=None, updated=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[users.c.name],
                set_={**{k: stmt.excluded[k] for k in keys}, "updated": now},
            )
            await conn.execute(stmt, people)

    def _take_starts(self) -> list[_Start]:
        taken, self._starts = self._starts, []
        return taken

    @staticmethod
    async def _count(counted: _Counts, start: _Start) -> Usage | None:
        """The usage of the start's VO with its lab counted; QuotaExceeded (the usage
        before it) when a limit is reached. None: the lab is admitted against no VO."""
        admission = start.admission
        if admission is None:
            return None
        usage = await counted.usage(admission.vo, start.user_name)
        if admission.labs is not None and usage.labs >= admission.labs:
            raise QuotaExceeded(admission, "labs", usage)
        if admission.labs_per_user is not None and usage.user_labs >= admission.labs_per_user:
            raise QuotaExceeded(admission, "labs_per_user", usage)
        return Usage(labs=usage.labs + 1, user_labs=usage.user_labs + 1)

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
                        labs.c.state.in_(ACTIVE_STATES),
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
            query = query.where(labs.c.state.in_(ACTIVE_STATES))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_lab(r) for r in rows]

    async def lab_times(self, lab_ids: Collection[str]) -> dict[str, LabTimes]:
        """When each lab first ran, and the detail of a failed lab's final event (its
        last output), by lab id; two queries for any number of labs."""
        if not lab_ids:
            return {}
        ids = list(lab_ids)
        started = (
            select(events.c.lab_id, func.min(events.c.time))
            .where(events.c.lab_id.in_(ids), events.c.state == LabState.RUNNING.value)
            .group_by(events.c.lab_id)
        )
        final = (
            select(events.c.lab_id, events.c.detail)
            .join(labs, labs.c.id == events.c.lab_id)
            .where(
                labs.c.id.in_(ids),
                labs.c.state == LabState.FAILED.value,
                events.c.seq == labs.c.last_seq,
            )
        )
        async with self.engine.connect() as conn:
            first = {r[0]: as_utc(r[1]) for r in (await conn.execute(started)).all()}
            output = {r[0]: r[1] for r in (await conn.execute(final)).all()}
        return {i: LabTimes(first.get(i), output.get(i, "")) for i in ids}

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

    async def save_handle(
        self, lab_id: str, handle: dict[str, Any], owner: str | None = None
    ) -> None:
        """Store what a driver needs to find the lab again after a restart. ``owner``:
        only while that replica follows the lab (else NotOwner)."""
        where = [labs.c.id == lab_id]
        if owner is not None:
            where.append(labs.c.owner == owner)
        async with self.writing() as conn:
            done = await conn.execute(
                update(labs).where(*where).values(handle=clean_json(handle), updated=utcnow())
            )
        if owner is not None and not done.rowcount:
            raise NotOwner(lab_id)

    async def claim(self, lab_id: str, owner: str) -> bool:
        """Make ``owner`` the lab's follower if nobody follows it (its owner is NULL or a
        replica without a row); whether it did."""
        async with self.writing() as conn:
            done = await conn.execute(
                update(labs)
                .where(
                    labs.c.id == lab_id,
                    labs.c.owner.is_(None) | labs.c.owner.not_in(select(replicas.c.id)),
                )
                .values(owner=owner)
            )
        return bool(done.rowcount)

    async def stopping_of(self, owner: str) -> list[Lab]:
        """The labs ``owner`` follows that are to be stopped (stopping, stop_failed)."""
        query = select(labs).where(
            labs.c.owner == owner,
            labs.c.state.in_([LabState.STOPPING.value, LabState.STOP_FAILED.value]),
        )
        async with self.engine.connect() as conn:
            return [_lab(r) for r in (await conn.execute(query)).all()]

    async def release(self, lab_id: str, owner: str) -> bool:
        """Give up ``owner``'s following of the lab (its owner becomes NULL, so a scan of
        any replica claims it); whether it was ``owner``'s."""
        async with self.writing() as conn:
            done = await conn.execute(
                update(labs).where(labs.c.id == lab_id, labs.c.owner == owner).values(owner=None)
            )
        return bool(done.rowcount)

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
        owner: str | None = None,
        notify: Collection[str] = (),
        reason: str = "",
    ) -> Lab:
        """Move a lab to ``state`` (or stay in it) and store the event.

        Raises InvalidTransition if the state machine forbids the move, or if
        ``allowed_from`` is given and the lab is in none of those states. ``owner``
        (a write of the task that follows the lab): only while that replica follows
        it, else NotOwner. ``notify``: bus kinds sent about the lab with the write (in
        its transaction: they leave only if it commits), besides ``event``. ``reason``:
        why a lab failed, for the metrics (backend/observe.py's REASONS).
        """
        message, detail = clean_text(message), clean_text(detail)
        url = clean_text(url) if url is not None else None
        for _attempt in range(20):
            lab = await self.get_lab(lab_id)
            if lab is None:
                raise KeyError(lab_id)
            if owner is not None and lab.owner != owner:
                raise NotOwner(lab_id)
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
            async with self.writing() as conn:
                moved = (
                    await conn.execute(
                        update(labs)
                        .where(
                            labs.c.id == lab_id,
                            labs.c.state == lab.state.value,
                            labs.c.last_seq == lab.last_seq,
                            *([labs.c.owner == owner] if owner is not None else []),
                        )
                        .values(**values)
                        .returning(*labs.c)
                    )
                ).first()
                if moved is None:
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
                if self.bus is not None:
                    for kind in ("event", *notify):
                        await self.bus.in_transaction(conn, kind, lab_id)
            self.notifier.publish(lab_id)
            after = _lab(moved)
            if self.on_moved is not None and after.state != lab.state:
                try:
                    self.on_moved(lab, after, reason)
                except Exception:  # an observer never breaks a transition
                    log.exception("lab %s: reporting its transition broke", lab_id)
            return after
        raise RuntimeError(f"lab {lab_id}: could not record {state} after repeated conflicts")

    async def replica_count(self) -> int:
        """The replicas registered now (1 for a backend without replicas' rows)."""
        async with self.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(replicas))).scalar()
        return int(count or 0)

    async def notice(self, lab_id: str, message: str) -> Lab:
        """Store ``message`` for the person as an event of an active lab, in the state it
        is in and with the progress it has; the lab's ``message`` becomes it.

        Returns the lab after it; raises KeyError for an unknown lab and
        InvalidTransition for a final one.
        """
        for _attempt in range(20):
            lab = await self.get_lab(lab_id)
            if lab is None:
                raise KeyError(lab_id)
            if not lab.active:
                raise InvalidTransition(lab.state, lab.state)
            async with self.engine.connect() as conn:
                progress = (
                    await conn.execute(
                        select(events.c.progress).where(
                            events.c.lab_id == lab_id, events.c.seq == lab.last_seq
                        )
                    )
                ).scalar()
            try:
                return await self.record(
                    lab_id, lab.state, message, progress=progress, allowed_from=(lab.state,)
                )
            except InvalidTransition:
                continue  # it moved on meanwhile: note it in its new state
        raise RuntimeError(f"lab {lab_id}: could not store a notice after repeated conflicts")
