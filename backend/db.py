"""Persistence: SQLAlchemy tables, the async engine, and schema migrations.

SQLite (through aiosqlite) is the embedded default; PostgreSQL (through
asyncpg) is for production. The schema is created and changed only by the
Alembic migrations in ``backend/migrations``; ``migrate()`` runs them at start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()

ACTIVE_CONDITION = "state NOT IN ('stopped', 'failed')"

labs = Table(
    "labs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_name", String(255), nullable=False, index=True),
    Column("server_name", String(255), nullable=False, default=""),
    Column("system", String(64), nullable=False),
    Column("vo", String(255), nullable=True, index=True),
    Column("options", JSON, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("last_seq", Integer, nullable=False, default=0),
    Column("url", String(1024), nullable=True),
    Column("handle", JSON, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    # the replica that follows the lab (replicas.id); NULL: none, any replica may take it
    Column("owner", String(36), nullable=True, index=True),
    # the start request's Idempotency-Key: the same request sent again gets this lab
    Column("request_id", String(64), nullable=True),
    # at most one active lab per user and server name, enforced by the database
    Index(
        "uq_labs_active_server",
        "user_name",
        "server_name",
        unique=True,
        sqlite_where=text(ACTIVE_CONDITION),
        postgresql_where=text(ACTIVE_CONDITION),
    ),
)

# what the hub last told of each person (groups, entitlements) and their active VO
users = Table(
    "users",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("groups", JSON, nullable=False),
    Column("entitlements", JSON, nullable=False),
    # the e-mail addresses the identity provider says are the person's, verified
    Column("emails", JSON, nullable=False, server_default=text("'[]'")),
    Column("vo", String(255), nullable=True),
    Column("updated", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lab_id", String(36), ForeignKey("labs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("progress", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("detail", Text, nullable=False, default=""),
    UniqueConstraint("lab_id", "seq", name="uq_events_lab_seq"),
)

# workshops (issue 15): a workshop is a VO whose members join with a code
workshops = Table(
    "workshops",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("owner", String(255), nullable=False, index=True),
    Column("tutors", JSON, nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("end", DateTime(timezone=True), nullable=False),
    Column("system", String(64), nullable=False),
    Column("options", JSON, nullable=False),
    Column("max_participants", Integer, nullable=False),
    Column("allow", JSON, nullable=True),
    Column("code", String(64), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("ended", DateTime(timezone=True), nullable=True),
)

workshop_members = Table(
    "workshop_members",
    metadata,
    Column(
        "workshop_id",
        String(40),
        ForeignKey("workshops.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_name", String(255), primary_key=True, index=True),
    Column("joined", DateTime(timezone=True), nullable=False),
)


# the backend processes sharing the database (issue 16): each renews its row before
# ``expires``; a row past it is a replica that died, and its labs are taken over
replicas = Table(
    "replicas",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False, index=True),
)

# what a lab's start needs that must not be stored in the clear, sealed with the
# site's key (backend/sealed.py): the start request's environment (the lab's hub
# token) until the lab runs, and the person's newest access token while it is active
lab_secrets = Table(
    "lab_secrets",
    metadata,
    Column("lab_id", String(36), ForeignKey("labs.id", ondelete="CASCADE"), primary_key=True),
    Column("env", Text, nullable=True),
    Column("access_token", Text, nullable=True),
    Column("updated", DateTime(timezone=True), nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


IMMEDIATE = "lablink_immediate"


def create_engine(url: str, connections: int = 15) -> AsyncEngine:
    """The async engine; on SQLite, transactions are begun by us (see ``IMMEDIATE``).

    A connection with the execution option ``lablink_immediate`` begins its
    transaction with ``BEGIN IMMEDIATE`` on SQLite, which takes the write lock
    at once: reads in that transaction see every write before it and no other
    writer can slip in (what admission needs). PostgreSQL uses locks instead;
    ``connections`` is the most it opens to PostgreSQL (see ``replicas.connections``).
    """
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # let SQLAlchemy's begin (below) emit BEGIN, not the driver
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get(IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # ``connections`` at most: a third kept open, the rest opened when a burst needs them
    kept = max(1, connections // 3)
    return create_async_engine(
        url, pool_size=kept, max_overflow=connections - kept, pool_pre_ping=True
    )


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent)."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
