"""``lablink inspect LAB_ID``: a lab as the backend's database has it, for an admin
following a stuck lab (read only; works while the backend is down).

The lab id may be the eight characters the logs show (``alice lab 59a12c46``)
as long as one lab starts with them.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import create_engine
from .db import labs as labs_table
from .settings import Settings
from .states import PROGRESS
from .store import Event, Lab, Store

MAX_MATCHES = 10


class NotFound(Exception):
    """No lab, or more than one, has that id; the message is for the admin."""


async def find_lab(settings: Settings, lab_id: str) -> tuple[Lab, list[Event]]:
    """The lab whose id is or starts with ``lab_id``, and all its events."""
    if not lab_id or not all(c.isalnum() or c == "-" for c in lab_id) or len(lab_id) > 64:
        raise NotFound(f"{lab_id[:64]!r} is not a lab id (letters, digits and '-')")
    url = settings.resolved_database_url
    if url.startswith("sqlite") and not (settings.state_dir / "backend.sqlite").exists():
        if not settings.database_url:
            raise NotFound(f"there is no database in {settings.state_dir} (the state directory)")
    engine = create_engine(url)
    try:
        return await _find(engine, lab_id)
    except (SQLAlchemyError, OSError) as exc:
        raise NotFound(f"the database cannot be read: {str(exc).splitlines()[0][:200]}") from None
    finally:
        await engine.dispose()


async def _find(engine: AsyncEngine, lab_id: str) -> tuple[Lab, list[Event]]:
    store = Store(engine)
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(labs_table.c.id)
            .where(labs_table.c.id.startswith(lab_id, autoescape=True))
            .limit(MAX_MATCHES + 1)
        )
        ids = [row[0] for row in rows]
    if not ids:
        raise NotFound(f"no lab's id starts with {lab_id!r}")
    if len(ids) > 1:
        listed = ", ".join(i[:13] for i in ids[:MAX_MATCHES])
        raise NotFound(f"{len(ids)} labs start with {lab_id!r} ({listed}); give more of it")
    lab = await store.get_lab(ids[0])
    assert lab is not None
    return lab, await store.events(lab.id, 0, limit=100000)


def as_json(settings: Settings, lab: Lab, events: list[Event]) -> str:
    kind = settings.systems[lab.system].kind if lab.system in settings.systems else None
    return json.dumps(
        {
            "id": lab.id,
            "user": lab.user_name,
            "server_name": lab.server_name,
            "system": lab.system,
            "kind": kind,
            "vo": lab.vo,
            "state": lab.state,
            "message": lab.message,
            "url": lab.url,
            "options": lab.options,
            "handle": lab.handle,
            "created": lab.created.isoformat(),
            "updated": lab.updated.isoformat(),
            "events": [
                {
                    "seq": e.seq,
                    "time": e.time.isoformat(),
                    "state": e.state,
                    "progress": e.progress,
                    "message": e.message,
                    "detail": e.detail,
                }
                for e in events
            ],
        },
        indent=2,
    )


def _pairs(values: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in values.items()) or "-"


def as_text(settings: Settings, lab: Lab, events: list[Event]) -> str:
    """What an admin reads: who, where, how far, the handle, then every event."""
    system = settings.systems.get(lab.system)
    kind = f" ({system.kind})" if system is not None else " (no longer in the site file)"
    server = f":{lab.server_name}" if lab.server_name else ""
    lines = [
        f"lab      {lab.id}",
        f"person   {lab.user_name}{server}" + (f"  VO {lab.vo}" if lab.vo else ""),
        f"system   {lab.system}{kind}",
        f"state    {lab.state} ({PROGRESS[lab.state]}%) since {lab.updated:%Y-%m-%d %H:%M:%S}"
        f" UTC: {lab.message}",
        f"url      {lab.url or '-'}",
        f"options  {_pairs({k: v for k, v in lab.options.items() if k != 'system'})}",
        f"handle   {_pairs(lab.handle)}",
        f"created  {lab.created:%Y-%m-%d %H:%M:%S} UTC",
        "events",
    ]
    for e in events:
        lines.append(f"  {e.seq:>3} {e.time:%H:%M:%S}  {e.state:<10} {e.message}")
        lines.extend(f"      | {line}" for line in e.detail.splitlines())
    return "\n".join(lines)
