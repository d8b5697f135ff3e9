"""The site file's part for labs as processes on the backend's machine
(``kind: local``: the embedded default, demos and development)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..base import QUIET_LAB_ARGS, SystemSettings


class LocalSystem(SystemSettings):
    """Labs as processes on the backend's own machine (demo and development; with
    ``run_as: person``, one Unix account per person)."""

    kind: Literal["local"] = Field(description="'local': each lab is a process on this machine")
    command: list[str] = Field(
        default_factory=lambda: ["jupyterhub-singleuser"],
        min_length=1,
        description="the lab's command; a bare name is looked up beside the backend's Python "
        "first, then on PATH. The command or a process it starts listens at the port in "
        "JUPYTERHUB_SERVICE_URL itself (the lab is ready when its own listener answers)",
    )
    args: list[str] = Field(
        default_factory=lambda: list(QUIET_LAB_ARGS),
        description="extra arguments for the command; unset: JupyterLab's news and update "
        "check off",
    )
    run_as: str = Field(
        default="",
        pattern=r"^(|person|[a-z_][a-z0-9_-]{0,31})$",
        description="whose Unix account a lab runs as: empty, the backend's own (a one-person "
        "demo: a lab can read the backend's environment and files, so only with `login: "
        "demo`); 'person', the account named as the person logs in (as JupyterHub's "
        "LocalProcessSpawner does; the backend runs as root); or one account's name for "
        "every lab (a demo on a machine where the backend runs as root)",
    )
    allow_root: bool = Field(
        default=False,
        description="pass --allow-root to the lab (never added by itself: a lab as root is "
        "the machine's root for whoever logs in)",
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

    def shared_by_everybody(self) -> tuple[str, str] | None:
        if self.run_as == "person":
            return None
        whose = f"the account {self.run_as!r}" if self.run_as else "the backend's own account"
        return (
            "run_as",
            f"every lab runs as {whose}, so anybody who logs in could read the others' labs"
            + ("" if self.run_as else " and the backend's secrets")
            + "; with login: oidc, set run_as: person (each lab as the person's own Unix "
            "account) or leave this system out",
        )
