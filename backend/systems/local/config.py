"""The site file's part for labs as processes on the backend's machine
(``kind: local``: the embedded default, demos and development)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..base import SystemSettings


class LocalSystem(SystemSettings):
    """Labs as processes on the backend's own machine (demo and development)."""

    kind: Literal["local"] = Field(description="'local': each lab is a process on this machine")
    command: list[str] = Field(
        default_factory=lambda: ["jupyterhub-singleuser"],
        min_length=1,
        description="the lab's command; a bare name is looked up beside the backend's Python "
        "first, then on PATH",
    )
    args: list[str] = Field(default_factory=list, description="extra arguments for the command")
    allow_root: bool | None = Field(
        default=None,
        description="pass --allow-root to the lab; unset: only when the backend runs as root",
    )
    start_timeout: float = Field(
        default=120, gt=0, le=3600, description="seconds a lab may take to answer before it fails"
    )
    stop_grace: float = Field(
        default=5, ge=0, le=300, description="seconds between SIGTERM and SIGKILL on stop"
    )
    output_lines: int = Field(
        default=20, ge=1, le=500, description="lines of the lab's output kept in its last event"
    )

    def start_limit(self) -> float:
        return self.start_timeout + 30
