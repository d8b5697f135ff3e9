"""The site file's ``workshops``: who may organize workshops, and what one may hand out.

Apart from :mod:`backend.workshops` (the database, the API's logic, the end), so that
the services that read the site file beside the backend do not load its database.
"""

from __future__ import annotations

from pydantic import Field

from .config_base import Strict
from .vos import Members, Quota, SiteName, SystemName, VOSettings


class PerLab(Strict):
    """The most one lab of a workshop may get (unset: what the system allows)."""

    runtime: int | None = Field(default=None, ge=1, description="minutes per lab, at most")
    nodes: int | None = Field(default=None, ge=0, description="nodes per lab, at most")
    gpus: int | None = Field(default=None, ge=0, description="GPUs per lab, at most")
    cpu: float | None = Field(default=None, gt=0, description="CPU cores per lab, at most")
    memory: float | None = Field(default=None, gt=0, description="GiB of memory per lab, at most")


class WorkshopLimits(Strict):
    """What one workshop may hand out at most; the create form offers only this."""

    participants: int = Field(
        default=100, ge=1, le=10000, description="a workshop's max_participants, at most"
    )
    labs: int | None = Field(
        default=None,
        ge=1,
        description="concurrent labs of one workshop, at most; unset: its max_participants "
        "plus its organizers",
    )
    days: int = Field(default=7, ge=1, le=366, description="end - start, at most, in days")
    systems: list[SystemName] | None = Field(
        default=None, description="the systems a workshop may use; unset: all"
    )
    partitions: dict[SystemName, list[SiteName]] = Field(
        default_factory=dict,
        description="per batch system, the partitions a workshop may use; a system left out: all",
    )
    flavors: dict[SystemName, list[SiteName]] = Field(
        default_factory=dict,
        description="per cloud system, the flavors a workshop may use; a system left out: all",
    )
    images: dict[SystemName, list[str]] = Field(
        default_factory=dict,
        description="per cloud system, the images a workshop may use; a system left out: "
        "those the system offers",
    )
    per_lab: PerLab = Field(default_factory=PerLab, description="the most one lab may get")

    def vo(self) -> VOSettings:
        """The limits as a VO, to check a workshop's presets with the form's check."""
        p = self.per_lab
        quota = Quota(runtime=p.runtime, nodes=p.nodes, gpus=p.gpus, cpu=p.cpu, memory=p.memory)
        return VOSettings(
            display_name="the site's workshop limits",
            systems=self.systems,
            partitions=self.partitions,
            flavors=self.flavors,
            quota=quota,
        )


class WorkshopSettings(Strict):
    """Who may organize workshops, and what one may hand out."""

    instructors: Members = Field(
        default_factory=Members,
        description="who may create workshops (like a VO's members); hub admins always may",
    )
    grace: int = Field(
        default=15,
        ge=0,
        le=1440,
        description="minutes after a workshop's end before the backend stops its labs",
    )
    limits: WorkshopLimits = Field(
        default_factory=WorkshopLimits, description="what one workshop may hand out at most"
    )
