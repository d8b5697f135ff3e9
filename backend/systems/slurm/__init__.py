"""Kind ``slurm``: labs as Slurm batch jobs submitted through slurmrestd's REST API,
reached directly or through the tunnel service."""

from __future__ import annotations

from typing import ClassVar

from ..batch.catalog import BatchKind
from .config import SlurmSystem
from .driver import SlurmDriver


class SlurmKind(BatchKind[SlurmSystem]):
    name: ClassVar[str] = "slurm"
    summary: ClassVar[str] = "a lab is a Slurm batch job, submitted through slurmrestd"
    settings = SlurmSystem
    driver = SlurmDriver


KIND = SlurmKind()
