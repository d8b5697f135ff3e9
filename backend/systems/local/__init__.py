"""Kind ``local``: each lab is a ``jupyterhub-singleuser`` process on the backend's
own machine (the embedded default; demos and development)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..base import SystemKind, Viewer
from .config import LocalSystem
from .driver import LocalDriver


class LocalKind(SystemKind[LocalSystem]):
    name: ClassVar[str] = "local"
    summary: ClassVar[str] = "a lab is a process on the machine the backend runs on"
    settings = LocalSystem
    driver = LocalDriver
    option_keys: ClassVar[tuple[str, ...]] = ("system",)

    def entry(self, name: str, system: LocalSystem, who: Viewer) -> dict[str, Any] | None:
        return {"fields": []}

    def check(
        self, name: str, system: LocalSystem, options: dict[str, Any], who: Viewer
    ) -> dict[str, Any]:
        return {"system": name}


KIND = LocalKind()
