"""Which backend replica follows which lab: leases in the database, takeover, fencing.

Every backend process is a replica with a fresh id and a row in ``replicas``: its
lease. It renews the row's ``expires`` every ``lease/3`` seconds; a row past
``expires`` is a replica that died (or hangs). Each active lab has an ``owner``, the
replica that runs its driver calls. A replica scans every ``lease/3`` seconds (and at
once when told ``orphans``): it deletes the rows of dead replicas, then claims its
share of the active labs whose owner is NULL or has no row, and hands each to the
manager (``on_claim``), which re-attaches to it.

On PostgreSQL a replica also holds a session advisory lock keyed by its id on the
bus's listening connection, for its life. When the process dies (SIGKILL), its
connection closes and the lock is free: the others see that at their next scan
(``pg_try_advisory_lock``) and take its labs without waiting for the lease to lapse.
Expiry stays the rule for a replica that hangs while its connection lives.

A replica whose heartbeat has failed for longer than ``lease - lease/3`` fences
itself before its lease lapses: it stops following its labs without writing
(``on_lost``), and ``healthy`` turns False (the API answers 503). Once a heartbeat
works again it registers anew, with a fresh id, and claims labs like any other.

SQLite allows one backend: :func:`hold_sqlite` takes an exclusive ``flock`` on
``<database>.lock`` for the process's life, and a replica on SQLite deletes every
other row at start (their processes are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .bus import Bus
from .db import labs, replicas, utcnow
from .health import error_line
from .observe import BackendMetrics
from .store import ACTIVE_STATES, Lab, Store, lab_from_row

log = logging.getLogger("lablink.backend.replicas")


def lock_key(replica_id: str) -> int:
    """A stable signed 64-bit key for the advisory lock a replica holds for its life."""
    digest = hashlib.blake2b(f"lablink-replica:{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# -- SQLite: one backend per database file ---------------------------------------------


class SqliteInUse(Exception):
    """Another process holds the SQLite database's lock file."""

    def __init__(self, path: Path, pid: int | None):
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"lablink backend: another backend ({who}) already uses the SQLite database "
            f"{path}; SQLite allows one backend - set database_url to a PostgreSQL database "
            "to run several."
        )


_held: dict[Path, list[int]] = {}  # database file -> [lock file descriptor, holders]


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None: not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def hold_sqlite(url: str) -> Path | None:
    """Take the exclusive lock of a SQLite database for this process (again: counted);
    raises SqliteInUse when another process holds it. Returns the database file (None:
    nothing to hold). :func:`let_go_sqlite` gives it back."""
    path = sqlite_path(url)
    if path is None:
        return None
    if path in _held:
        _held[path][1] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise SqliteInUse(path, int(holder) if holder.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = [fd, 1]
    return path


def let_go_sqlite(path: Path | None) -> None:
    if path is None or path not in _held:
        return
    _held[path][1] -= 1
    if _held[path][1] <= 0:
        fd, _ = _held.pop(path)
        os.close(fd)  # the flock goes with it


# -- the replica ---------------------------------------------------------------------


DB_ERRORS = (Exception,)  # what a failed heartbeat may raise: anything but a cancel


class Replica:
    """This process's lease, its scans for labs nobody follows, and its fence.

    ``on_claim(lab)``: a lab this replica now owns (the manager adopts it);
    ``on_lost()``: the replica fenced itself (the manager drops every lab task of this
    process without writing); ``on_back()``: it registered again after that."""

    def __init__(
        self,
        store: Store,
        lease: float,
        on_claim: Callable[[Lab], Awaitable[None] | None],
        on_lost: Callable[[], Awaitable[None] | None],
        bus: Bus | None = None,
        on_back: Callable[[], None] | None = None,
    ):
        self.store = store
        self.on_back = on_back
        self.lease = lease
        self.beat = lease / 3
        self.on_claim = on_claim
        self.on_lost = on_lost
        self.bus = bus
        self.postgres = store.dialect == "postgresql"
        self.id = ""
        self.healthy = False
        self._engine: AsyncEngine = store.engine
        self._own_engine = False
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._last_ok = time.monotonic()
        self.metrics: BackendMetrics | None = None  # set by the app (backend/observe.py)

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register, claim the labs nobody follows (at a start after a stop of the only
        replica: all of them), then heartbeat and scan in the background."""
        if self.postgres:
            # the heartbeat and scans on a small pool of their own: a burst of
            # requests waiting for the main pool must not make the lease lapse
            url = self.store.engine.url.render_as_string(hide_password=False)
            self._engine = create_async_engine(url, pool_size=2, max_overflow=1, pool_pre_ping=True)
            self._own_engine = True
        if self.bus is not None:
            self.bus.on("orphans", self._orphans)
        await self._register()
        if not self.postgres:
            async with self.store.writing() as conn:  # one backend: the others are gone
                await conn.execute(delete(replicas).where(replicas.c.id != self.id))
        self.healthy = True
        await self.scan()
        if not self.postgres:
            # the only replica (hold_sqlite): nobody to take labs from or hand them to,
            # so no heartbeat to fail and no fence (which would only leave labs unfollowed);
            # it scans only when told (a lab handed back after a database error)
            self._tasks = [asyncio.create_task(self._scans(None), name="replica-scan")]
            return
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="replica-heartbeat"),
            asyncio.create_task(self._scans(), name="replica-scan"),
        ]

    async def close(self) -> None:
        """Leave gracefully (the lab tasks are cancelled already): give the labs back,
        delete the row and tell the others, who claim the labs at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.id and self.healthy:
            try:
                async with self.store.writing() as conn:
                    given = await conn.execute(
                        update(labs).where(labs.c.owner == self.id).values(owner=None)
                    )
                    await conn.execute(delete(replicas).where(replicas.c.id == self.id))
                log.info("replica %s left; %d labs handed back", self.id, given.rowcount)
                if self.bus is not None:
                    await self.bus.send("orphans", self.id)
            except Exception as exc:  # the lease lapses instead
                log.warning("replica %s could not hand its labs back: %s", self.id, exc)
        self.healthy = False
        if self.bus is not None and self.id:
            await self.bus.release_lock(lock_key(self.id))
        if self._own_engine:
            await self._engine.dispose()

    # -- the lease -------------------------------------------------------------------

    async def _register(self) -> None:
        """A fresh id and row (the lock first: a row without it looks dead)."""
        old, new = self.id, str(uuid.uuid4())
        bus = self.bus if self.postgres else None
        if bus is not None and not await bus.hold_lock(lock_key(new)):
            await bus.release_lock(lock_key(new))
            raise ConnectionError("the bus holds no connection to the database")
        try:
            async with self._writing() as conn:
                if old:  # its labs become orphans, claimed again by the next scan
                    await conn.execute(delete(replicas).where(replicas.c.id == old))
                now = utcnow()
                await conn.execute(
                    insert(replicas).values(
                        id=new,
                        host=socket.gethostname()[:255],
                        pid=os.getpid(),
                        started=now,
                        expires=now + timedelta(seconds=self.lease),
                    )
                )
                self.id = new
                if self.postgres:
                    await conn.execute(self._renewal())
        except BaseException:
            self.id = old
            if bus is not None:
                await bus.release_lock(lock_key(new))
            raise
        if bus is not None and old:
            await bus.release_lock(lock_key(old))
        self.store.replica_id = new
        self._last_ok = time.monotonic()
        log.info("replica %s registered (lease %.3g s)", self.id, self.lease)

    def _writing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._engine.begin() if self._own_engine else self.store.writing()

    def _renewal(self) -> Any:
        if self.postgres:  # the database's clock: every replica compares with it
            expires: Any = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, self.lease)
        else:
            expires = utcnow() + timedelta(seconds=self.lease)
        return update(replicas).where(replicas.c.id == self.id).values(expires=expires)

    async def renew(self) -> bool:
        """Renew the lease; False when the row is gone (another replica found this one
        dead)."""
        async with self._writing() as conn:
            done = await conn.execute(self._renewal())
        return bool(done.rowcount)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.beat)
            sent = time.monotonic()
            try:
                alive = await asyncio.wait_for(self.renew(), self.beat)
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                late = time.monotonic() - self._last_ok
                if self.healthy and late > self.lease - self.beat:
                    log.warning(
                        "replica %s: no heartbeat for %.1f s (%s); it stops following labs",
                        self.id,
                        late,
                        error_line(exc),
                    )
                    await self._fence()
                continue
            if alive and self.healthy:
                self._last_ok = sent
                if self.metrics is not None:
                    self.metrics.renewals.inc()
                continue
            if self.healthy:  # the others deleted the row: this replica was taken for dead
                log.warning("replica %s was taken for dead; it stops following labs", self.id)
                await self._fence()
            try:
                await self._register()
            except DB_ERRORS as exc:
                log.info("replica %s: cannot register again yet: %s", self.id, error_line(exc))
                continue
            self.healthy = True
            log.info("replica %s follows labs again", self.id)
            if self.on_back is not None:
                self.on_back()
            self._wake.set()

    async def _fence(self) -> None:
        self.healthy = False
        if self.metrics is not None:
            self.metrics.losses.inc()
        result = self.on_lost()
        if result is not None:
            await result

    # -- scans ---------------------------------------------------------------------------

    def _orphans(self, _replica_id: str) -> None:
        self._wake.set()

    async def _scans(self, every: float | None = -1.0) -> None:
        """Scan every ``every`` seconds (default: a heartbeat's) and when woken; None:
        only when woken."""
        period = self.beat if every is not None and every < 0 else every
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
            self._wake.clear()
            if not self.healthy:
                continue
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.info("replica %s: a scan failed: %s", self.id, error_line(exc))

    async def scan(self) -> list[Lab]:
        """Delete the rows of dead replicas, then claim this replica's share of the labs
        nobody follows and hand each to ``on_claim``; the labs claimed."""
        dead = await self._bury()
        if dead and self.bus is not None:
            for replica_id in dead:  # the others claim their share now too
                await self.bus.send("orphans", replica_id)
        claimed = await self._claim()
        if claimed and self.metrics is not None:
            self.metrics.takeovers.inc(len(claimed))
        for lab in claimed:
            result = self.on_claim(lab)
            if result is not None:
                await result
        return claimed

    async def _bury(self) -> list[str]:
        """Delete the rows of replicas past their lease or (PostgreSQL) whose lock is
        free: their process is gone. The ids deleted."""
        if not self.postgres:
            return []  # deleted at start; nobody else registers
        dead: list[str] = []
        async with self._engine.connect() as conn:
            others = [
                r[0]
                for r in await conn.execute(select(replicas.c.id).where(replicas.c.id != self.id))
            ]
            for other in others:
                got = (
                    await conn.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(other)}
                    )
                ).scalar()
                if got:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(other)}
                    )
                    dead.append(other)
            await conn.commit()
        async with self._writing() as conn:
            expired = delete(replicas).where(
                replicas.c.id != self.id, replicas.c.expires < func.now()
            )
            if dead:
                expired = delete(replicas).where(
                    replicas.c.id != self.id,
                    (replicas.c.expires < func.now()) | replicas.c.id.in_(dead),
                )
            rows = await conn.execute(expired.returning(replicas.c.id))
            gone = [r[0] for r in rows]
        for replica_id in gone:
            why = "its connection closed" if replica_id in dead else "its lease lapsed"
            log.info("replica %s is gone (%s); its labs are taken over", replica_id, why)
        return gone

    async def _claim(self) -> list[Lab]:
        orphan = labs.c.state.in_(ACTIVE_STATES) & (
            labs.c.owner.is_(None) | labs.c.owner.not_in(select(replicas.c.id))
        )
        if not self.postgres:  # the one replica: all of them
            async with self.store.writing() as conn:
                rows = await conn.execute(
                    update(labs).where(orphan).values(owner=self.id).returning(*labs.c)
                )
                return [lab_from_row(r) for r in rows]
        async with self._engine.connect() as conn:
            count = (await conn.execute(select(func.count()).where(orphan))).scalar() or 0
            live = (await conn.execute(select(func.count()).select_from(replicas))).scalar()
        if not count:
            return []
        share = math.ceil(count / max(int(live or 1), 1))
        chosen = (
            select(labs.c.id)
            .where(orphan)
            .order_by(labs.c.created)
            .limit(share)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self._writing() as conn:
            # only while this replica's row lives: a replica taken for dead claims nothing
            me = select(replicas.c.id).where(replicas.c.id == self.id).scalar_subquery()
            rows = await conn.execute(
                update(labs)
                .where(labs.c.id.in_(chosen), me.is_not(None))
                .values(owner=self.id)
                .returning(*labs.c)
            )
            claimed = [lab_from_row(r) for r in rows]
        if claimed:
            log.info(
                "replica %s took over %d labs of %d nobody followed", self.id, len(claimed), count
            )
        return claimed
