"""The hub's own SQLite database in write-ahead-log mode.

JupyterHub commits its session many times per spawn (the server, its API token,
its OAuth client, the spawner's state), each a transaction in the hub's one
thread. In SQLite's default rollback-journal mode every commit writes and
deletes a journal with a sync each time; in WAL mode with ``synchronous=NORMAL``
a commit is an append to the log (synced at checkpoints): still atomic and
consistent after a crash of the hub, at most the last commits lost when the
machine itself loses power.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


def use_wal(db_file: Path) -> None:
    """Every connection the hub opens to ``db_file`` uses WAL, synchronous=NORMAL."""
    wanted = str(db_file.resolve())

    @event.listens_for(Engine, "connect")
    def _wal(dbapi_conn: Any, _record: Any) -> None:
        if not isinstance(dbapi_conn, sqlite3.Connection):
            return
        files = [row[2] for row in dbapi_conn.execute("PRAGMA database_list")]
        if wanted in files:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
