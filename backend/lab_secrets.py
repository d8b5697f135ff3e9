"""The sealed part of a lab (table ``lab_secrets``): its start's environment until it
runs, and the person's newest access token while it is active.

Every value is sealed (backend/sealed.py) before it is stored; without a sealer (SQLite
without a key) nothing is stored and every read answers None, so the manager keeps
these in memory as a lone backend always did.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import lab_secrets, utcnow
from .sealed import SealBroken, Sealer

log = logging.getLogger("lablink.backend.lab_secrets")


class LabSecrets:
    def __init__(
        self,
        engine: AsyncEngine,
        writing: Callable[..., contextlib.AbstractAsyncContextManager[AsyncConnection]],
        sealer: Sealer | None,
    ):
        self.engine = engine
        self._writing = writing
        self.sealer = sealer

    @property
    def sealing(self) -> bool:
        """Whether secrets are stored (a key is set)."""
        return self.sealer is not None

    def rows(
        self, lab_id: str, env: dict[str, str], access_token: str | None
    ) -> dict[str, Any] | None:
        """The sealed row of a new lab, for the insert in its admission transaction;
        None without a sealer."""
        if self.sealer is None:
            return None
        return {
            "lab_id": lab_id,
            "env": self.sealer.seal(json.dumps(env)),
            "access_token": self.sealer.seal(access_token) if access_token else None,
            "updated": utcnow(),
        }

    def _open(self, lab_id: str, what: str, sealed: str | None) -> str | None:
        if sealed is None or self.sealer is None:
            return None
        try:
            return self.sealer.open(sealed)
        except SealBroken:
            log.warning("lab %s: its sealed %s opens with none of the site's keys", lab_id, what)
            return None

    async def _read(self, lab_id: str, column: str) -> str | None:
        if self.sealer is None:
            return None
        async with self.engine.connect() as conn:
            sealed = (
                await conn.execute(
                    select(lab_secrets.c[column]).where(lab_secrets.c.lab_id == lab_id)
                )
            ).scalar()
        return self._open(lab_id, column.replace("_", " "), sealed)

    async def env(self, lab_id: str) -> dict[str, str] | None:
        """The environment the lab's start was asked with; None once it ran (or never
        stored, or no key opens it)."""
        text = await self._read(lab_id, "env")
        if text is None:
            return None
        value = json.loads(text)
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None

    async def token(self, lab_id: str) -> str | None:
        """The person's newest access token for the lab, or None."""
        return await self._read(lab_id, "access_token")

    async def put_token(self, lab_id: str, token: str) -> bool:
        """Store the person's newest access token for an active lab; a write only when it
        changed. True when written (False too for a lab without a row: it has ended)."""
        if self.sealer is None or await self.token(lab_id) == token:
            return False
        async with self._writing() as conn:
            done = await conn.execute(
                update(lab_secrets)
                .where(lab_secrets.c.lab_id == lab_id)
                .values(access_token=self.sealer.seal(token), updated=utcnow())
            )
        return bool(done.rowcount)

    async def drop_env(self, lab_id: str) -> None:
        """Forget the start's environment (the lab runs: nobody will launch it again)."""
        if self.sealer is None:
            return
        async with self._writing() as conn:
            await conn.execute(
                update(lab_secrets)
                .where(lab_secrets.c.lab_id == lab_id, lab_secrets.c.env.is_not(None))
                .values(env=None, updated=utcnow())
            )

    async def drop(self, lab_id: str) -> None:
        """Forget everything sealed of the lab (it has ended)."""
        if self.sealer is None:
            return
        async with self._writing() as conn:
            await conn.execute(delete(lab_secrets).where(lab_secrets.c.lab_id == lab_id))
