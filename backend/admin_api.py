"""The admin's overview of the site (``GET /api/v1/admin/overview``), for the hub's admin
page: every active lab with its handle, each site VO's and each workshop's usage
against its limit, and the last failed labs with their sentences.

Bounded work whatever the number of labs: one query for the active labs (two more for
when they began to run and a failed lab's output), one for the workshops, one for the
failures (and one for their output); usage is counted from the active labs.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import or_, select

from .api import LabOut, lab_view, store_of
from .auth import Principal, authenticate
from .db import labs, utcnow, workshops
from .settings import Settings
from .states import LabState
from .store import Lab, LabTimes, lab_from_row
from .workshop_settings import WorkshopSettings
from .workshops import Workshop, workshop_from_row

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
Auth = Annotated[Principal, Depends(authenticate)]

FAILURES = 20  # the failed labs the overview shows, newest first
ONLY_ADMINS = (
    "The overview is for the site's admins: use an admin token, or the hub's token with "
    "X-Lablink-Admin: true for a hub admin."
)


class AdminLabOut(LabOut):
    workshop: str | None = Field(
        default=None, description="the workshop's id when the lab is one of a workshop; else None"
    )


class VOUsage(BaseModel):
    name: str
    display_name: str
    labs: int = Field(description="the VO's active labs")
    limit: int | None = Field(description="quota.labs: active labs at most; None: no limit")
    labs_per_user: int | None = Field(description="quota.labs_per_user; None: no limit")


class WorkshopUsage(BaseModel):
    id: str
    title: str
    state: str = Field(description="upcoming, open or ended")
    labs: int = Field(description="the workshop's active labs")
    limit: int = Field(description="the workshop's labs active at once, at most")


class Failure(BaseModel):
    id: str
    user: str
    server_name: str
    system: str
    system_display_name: str
    vo: str | None
    message: str = Field(description="the sentence the lab failed with")
    failure_detail: str = Field(default="", description="the lab's last output, if any")
    updated: datetime


class Overview(BaseModel):
    labs: list[AdminLabOut] = Field(description="every active lab, oldest first")
    vos: list[VOUsage] = Field(description="each of the site's VOs, in the site file's order")
    workshops: list[WorkshopUsage] = Field(
        description="each workshop that is open or has active labs"
    )
    failures: list[Failure] = Field(description=f"the last {FAILURES} failed labs, newest first")


async def active_labs(request: Request) -> list[Lab]:
    return await store_of(request).list_labs(active_only=True)


async def failed_labs(request: Request) -> list[Lab]:
    query = (
        select(labs)
        .where(labs.c.state == LabState.FAILED.value)
        .order_by(labs.c.updated.desc(), labs.c.id)
        .limit(FAILURES)
    )
    async with store_of(request).engine.connect() as conn:
        return [lab_from_row(r) for r in (await conn.execute(query)).all()]


async def shown_workshops(request: Request, busy: set[str]) -> list[Workshop]:
    """The workshops open now, and those with active labs (``busy``: their ids)."""
    now = utcnow()
    open_now = workshops.c.ended.is_(None) & (workshops.c.start <= now) & (workshops.c.end > now)
    query = (
        select(workshops)
        .where(or_(open_now, workshops.c.id.in_(sorted(busy))) if busy else open_now)
        .order_by(workshops.c.start, workshops.c.id)
    )
    async with store_of(request).engine.connect() as conn:
        return [workshop_from_row(r) for r in (await conn.execute(query)).all()]


@router.get("/overview", response_model=Overview)
async def overview(request: Request, who: Auth) -> Overview:
    """Every active lab (with its handle), each VO's and workshop's usage against its
    limit, and the last failed labs. Only for admins."""
    if not who.admin:
        raise HTTPException(403, ONLY_ADMINS)
    settings: Settings = request.app.state.settings
    store = store_of(request)
    active = await active_labs(request)
    failed = await failed_labs(request)
    times = await store.lab_times([lab.id for lab in active + failed])
    site_vos = settings.vos
    busy = {lab.vo for lab in active if lab.vo and lab.vo not in site_vos}
    found = await shown_workshops(request, busy)
    titles = {ws.id: ws.title for ws in found}
    used = Counter(lab.vo for lab in active if lab.vo)

    shown = []
    for lab in active:
        view = lab_view(settings, lab, times.get(lab.id), admin=True, titles=titles)
        workshop = lab.vo if lab.vo in titles else None  # a VO gone from the site file: neither
        site_vo = lab.vo if lab.vo in site_vos else None
        shown.append(AdminLabOut(**{**view.model_dump(), "workshop": workshop, "vo": site_vo}))
    limits = (settings.workshops or WorkshopSettings()).limits
    now = utcnow()
    return Overview(
        labs=shown,
        vos=[
            VOUsage(
                name=name,
                display_name=vo.display_name or name,
                labs=used.get(name, 0),
                limit=vo.quota.labs,
                labs_per_user=vo.quota.labs_per_user,
            )
            for name, vo in site_vos.items()
        ],
        workshops=[
            WorkshopUsage(
                id=ws.id,
                title=ws.title,
                state=ws.state(now),
                labs=used.get(ws.id, 0),
                limit=ws.lab_limit(limits),
            )
            for ws in found
        ],
        failures=[failure(settings, lab, times.get(lab.id)) for lab in failed],
    )


def failure(settings: Settings, lab: Lab, times: LabTimes | None) -> Failure:
    system = settings.systems.get(lab.system)
    return Failure(
        id=lab.id,
        user=lab.user_name,
        server_name=lab.server_name,
        system=lab.system,
        system_display_name=(system.display_name or lab.system) if system else lab.system,
        vo=lab.vo,
        message=lab.message,
        failure_detail=times.failure_detail if times else "",
        updated=lab.updated,
    )
