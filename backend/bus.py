"""Notifications between the backend's replicas: one PostgreSQL channel, ``lablink``.

A payload is ``<kind>:<argument>``, never a secret:

- ``event:<lab id>`` a lab has a new event (the event streams read the table);
- ``stop:<lab id>`` the replica that follows the lab is to stop it;
- ``token:<lab id>`` the lab's access token changed (the follower reloads it);
- ``orphans:<replica id>`` a replica left its labs; the others claim them now.

Two more kinds are only ever dispatched in this process:

- ``resync`` (argument ``""``): the listening connection came back after it was lost;
  notifications sent meanwhile are gone, so whoever keeps state re-reads the table;
- ``lost`` (argument ``""``): the listening connection was lost (and with it the
  advisory locks ``hold_lock`` took on it).

On PostgreSQL a notification reaches every replica, the sender's own included, once
the transaction that sent it commits. A dedicated asyncpg connection listens; it also
holds the session advisory locks of ``hold_lock`` (a replica's liveness: when the
process dies, its connection closes and the locks are free). When that connection is
lost, the bus connects again with a backoff (0.2 s doubling to 5 s) and takes the
locks again.

On SQLite there is one backend process: ``send`` dispatches at once in this process,
and ``in_transaction`` does nothing (the store wakes its streams after the commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .health import error_line

log = logging.getLogger("lablink.bus")

CHANNEL = "lablink"
KINDS = frozenset({"event", "stop", "token", "orphans"})  # sent between replicas
LOCAL_KINDS = frozenset({"resync", "lost"})  # dispatched in this process only
MAX_ARGUMENT = 200  # characters; ids are far shorter (NOTIFY takes < 8000 bytes)
FIRST_DELAY = 0.2  # seconds before connecting again; doubled up to MAX_DELAY
MAX_DELAY = 5.0
CHECK_EVERY = 5.0  # seconds between the checks of a quiet listening connection
CHECK_TIMEOUT = 3.0
CONNECT_TIMEOUT = 5.0

Handler = Callable[[str], Awaitable[None] | None]


def payload(kind: str, argument: str) -> str:
    """The text sent for ``kind`` (one of KINDS) about ``argument`` (an id)."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    if not argument or len(argument) > MAX_ARGUMENT or ":" in argument:
        raise ValueError(f"a {kind} notification needs an id, not {argument[:40]!r}")
    return f"{kind}:{argument}"


def listen_dsn(engine: AsyncEngine) -> str:
    """The engine's PostgreSQL URL as a DSN asyncpg takes (password included)."""
    url = make_url(engine.url.render_as_string(hide_password=False))
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Bus:
    """Sends and receives the ``lablink`` notifications of one replica."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._handlers: dict[str, list[Handler]] = {}
        self._locks: set[int] = set()  # advisory lock keys held on the connection
        self._conn: asyncpg.Connection | None = None
        self._use = asyncio.Lock()  # one statement at a time on the listening connection
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # async handlers running
        self._ready = asyncio.Event()
        self._closing = False

    @property
    def connected(self) -> bool:
        """Whether notifications from other replicas reach this one now (always on
        SQLite, where there are none)."""
        return not self.postgres or (self._conn is not None and not self._conn.is_closed())

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(argument)`` (sync, or async: run as a task) for each
        notification of ``kind``, from any replica, this one included."""
        if kind not in KINDS | LOCAL_KINDS:
            raise ValueError(f"unknown notification kind {kind!r}")
        self._handlers.setdefault(kind, []).append(handler)

    async def start(self, wait: float = CONNECT_TIMEOUT) -> None:
        """Begin listening (PostgreSQL); waits up to ``wait`` seconds for the first
        connection, then goes on connecting in the background."""
        if not self.postgres or self._runner is not None:
            return
        self._closing = False
        self._runner = asyncio.create_task(self._listen(), name="lablink-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def close(self) -> None:
        """Stop listening; the connection closes and its advisory locks are free."""
        self._closing = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await self._drop_connection()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send(self, kind: str, argument: str) -> None:
        """Notify every replica now (PostgreSQL: on a connection of the pool, in a
        transaction of its own; SQLite: the handlers of this process run at once)."""
        message = payload(kind, argument)
        if not self.postgres:
            self._dispatch(kind, argument)
            return
        async with self.engine.begin() as conn:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"), _params(message))

    async def in_transaction(self, conn: AsyncConnection, kind: str, argument: str) -> None:
        """Notify every replica when the transaction of ``conn`` commits (nothing if it
        rolls back). On SQLite this does nothing: the caller, the only process, acts
        after the commit itself (the store wakes its streams; use ``send`` for the
        other kinds)."""
        message = payload(kind, argument)
        if self.postgres:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"), _params(message))

    async def in_transaction_all(
        self, conn: AsyncConnection, kind: str, arguments: Collection[str]
    ) -> None:
        """``in_transaction`` for many ids, in one statement."""
        messages = [payload(kind, a) for a in arguments]
        if self.postgres and messages:
            await conn.execute(
                text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
                {"channel": CHANNEL, "payloads": messages},
            )

    async def hold_lock(self, key: int) -> bool:
        """Hold the session advisory lock ``key`` on the listening connection for as
        long as this bus runs, taking it again after each reconnect. Returns whether it
        is held now (False: not connected just now; it is taken at the next connect).
        On SQLite there are no advisory locks: returns True."""
        if not self.postgres:
            return True
        self._locks.add(key)
        return await self._lock_now(key)

    async def release_lock(self, key: int) -> None:
        """Give up a lock ``hold_lock`` took."""
        if not self.postgres or key not in self._locks:
            return
        self._locks.discard(key)
        conn = self._conn
        if conn is None:
            return
        try:
            async with self._use:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.info("could not release an advisory lock: %s", error_line(exc))

    # -- the listening connection -------------------------------------------------------

    async def _lock_now(self, key: int) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with self._use:
                await conn.execute("SELECT pg_advisory_lock($1)", key)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning(
                "could not take an advisory lock on the listening connection: %s", error_line(exc)
            )
            return False
        return True

    async def _listen(self) -> None:
        dsn = listen_dsn(self.engine)
        delay = FIRST_DELAY
        was_connected = False
        failing = False
        while not self._closing:
            try:
                conn = await self._connect(dsn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if not failing:  # one line per outage, not one per attempt
                    why = error_line(exc)
                    log.warning("cannot listen for notifications (%s); trying again", why)
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            if failing:
                log.info("listening for notifications again")
            failing, delay = False, FIRST_DELAY
            self._conn = conn
            self._ready.set()
            if was_connected:
                self._dispatch("resync", "")
            was_connected = True
            await self._until_lost(conn)
            await self._drop_connection()
            if not self._closing:
                log.warning("lost the connection that listens for notifications; reconnecting")
                self._dispatch("lost", "")

    async def _connect(self, dsn: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        try:
            await conn.add_listener(CHANNEL, self._received)
            for key in sorted(self._locks):
                await asyncio.wait_for(
                    conn.execute("SELECT pg_advisory_lock($1)", key), CONNECT_TIMEOUT
                )
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _until_lost(self, conn: asyncpg.Connection) -> None:
        """Return once ``conn`` is closed or stops answering."""
        lost = asyncio.Event()

        def closed(_conn: Any) -> None:
            lost.set()

        conn.add_termination_listener(closed)
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), CHECK_EVERY)
                return
            try:  # a quiet connection: is the server still there?
                async with self._use:
                    await conn.execute("SELECT 1", timeout=CHECK_TIMEOUT)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no goodbye: it may not answer any more

    def _received(self, _conn: Any, _pid: int, _channel: str, message: str) -> None:
        kind, sep, argument = message.partition(":")
        if not sep or kind not in KINDS or not argument or len(argument) > MAX_ARGUMENT:
            log.debug("ignored a notification %r", message[:80])
            return
        self._dispatch(kind, argument)

    def _dispatch(self, kind: str, argument: str) -> None:
        for handler in self._handlers.get(kind, ()):
            try:
                result = handler(argument)
            except Exception as exc:
                log.warning("a %s notification's handler failed: %s", kind, error_line(exc))
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._run(kind, result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run(kind: str, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception as exc:
            log.warning("a %s notification's handler failed: %s", kind, error_line(exc))


def _params(message: str) -> dict[str, str]:
    return {"channel": CHANNEL, "payload": message}
