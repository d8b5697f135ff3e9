"""Kind ``unicore``: labs as jobs submitted to UNICORE/X's REST API (batch jobs, or
on a login node), reached directly or through the tunnel service."""

from __future__ import annotations

from typing import Any, ClassVar

from ..batch.catalog import BatchKind
from .config import UnicorePartition, UnicoreSystem
from .driver import UnicoreDriver


class UnicoreKind(BatchKind[UnicoreSystem]):
    name: ClassVar[str] = "unicore"
    summary: ClassVar[str] = "a lab is a UNICORE job on an HPC system (batch or on a login node)"
    settings = UnicoreSystem
    driver = UnicoreDriver

    def partition_label(self, name: str, part: UnicorePartition) -> str:  # type: ignore[override]
        label = part.display_name or name
        return (
            f"{label} (login node)" if part.interactive and "login" not in label.lower() else label
        )

    def partition_extra(self, part: Any) -> dict[str, Any]:
        return {"interactive": part.interactive}


KIND = UnicoreKind()
