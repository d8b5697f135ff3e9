"""The site file's part every batch kind shares (``unicore``, ``slurm``): partitions
and their ranges, reservations, who gets which accounts and projects, the lab's
start script, and how the lab is reached (directly or through the tunnel service).

A batch kind's settings model derives from :class:`BatchSystem` and adds how
the batch system is reached (its URL, its login)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from ...config_base import SITE_NAME_PATTERN, Strict
from ...sshconfig import SshTunnel
from ..base import QUIET_LAB_ARGS, Range, SystemSettings

ACCOUNT = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# a minute more than the backend's own limits: its sentence reaches the person first
HUB_MARGIN = 60.0


def _nodes() -> Range:
    return Range(min=1, max=1)


def _runtime() -> Range:
    return Range(min=10, max=480, default=60)


def _gpus() -> Range:
    return Range(min=0, max=0)


class Partition(Strict):
    """A partition (queue) of the batch system."""

    display_name: str = Field(default="", description="the name people see; unset: the key")
    description: str = Field(default="", description="one line shown beside the name")
    nodes: Range = Field(default_factory=_nodes, description="nodes per lab")
    runtime: Range = Field(default_factory=_runtime, description="wall time in minutes")
    gpus: Range = Field(default_factory=_gpus, description="GPUs per node")


class Reservation(Strict):
    display_name: str = Field(default="", description="the name people see; unset: the key")
    partitions: list[Annotated[str, Field(pattern=SITE_NAME_PATTERN)]] = Field(
        min_length=1, description="the partitions the reservation is for"
    )


class AccessGrant(Strict):
    """Accounts and projects given to some users or groups (OIDC entitlements give
    more, see ``identity``)."""

    users: list[str] = Field(
        default_factory=list, description="user names this grant is for ('*': everybody)"
    )
    groups: list[str] = Field(default_factory=list, description="hub groups this grant is for")
    accounts: list[Annotated[str, Field(pattern=r"^(\{user\}|[a-z_][a-z0-9_.-]{0,31})$")]] = Field(
        default_factory=list,
        description="HPC accounts (login names) on the system; '{user}' stands for the "
        "person's own user name",
    )
    projects: list[Annotated[str, Field(pattern=SITE_NAME_PATTERN)]] = Field(
        default_factory=list,
        description="projects (budgets) jobs may be charged to, each with any of this "
        "entry's accounts (only with them: list other pairs in another entry)",
    )

    @model_validator(mode="after")
    def _for_someone(self) -> AccessGrant:
        if not self.users and not self.groups:
            raise ValueError("a grant needs 'users' or 'groups'")
        return self

    def applies_to(self, user: str, groups: frozenset[str]) -> bool:
        return "*" in self.users or user in self.users or bool(groups & set(self.groups))


P = TypeVar("P", bound=Partition)


class BatchSystem(SystemSettings, Generic[P]):
    """What every batch kind's system has. ``P``: the kind's partition model."""

    tunnel: Literal["none", "ssh"] = Field(
        default="none",
        description="'none': the backend and the proxy reach the lab's host:port directly; "
        "'ssh': through the tunnel service and the system's login nodes (see `ssh`)",
    )
    ssh: SshTunnel | None = Field(
        default=None, description="login nodes, key and allowed destinations for `tunnel: ssh`"
    )
    lab_hosts: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="where a lab may say it listens: '*', addresses or networks "
        "('10.1.0.0/16'), or names whose labels are shell-style patterns, each matching one "
        "label ('jwc*' matches 'jwc01', not 'jwc.example.org'); addresses are compared "
        "however they are spelled ('127.1' is 127.0.0.1); others are refused, and so are "
        "loopback and link-local addresses unless a pattern other than '*' names them",
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines the start script runs before the lab (module loads); the "
        "admin's text, never a person's input",
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="variables set for every lab job (PATH, …)"
    )
    lab_command: list[str] = Field(
        default_factory=lambda: ["jupyterhub-singleuser"],
        min_length=1,
        description="the lab's command on the compute node",
    )
    lab_args: list[str] = Field(
        default_factory=lambda: list(QUIET_LAB_ARGS),
        description="extra arguments for it; unset: JupyterLab's news and update check off",
    )
    partitions: dict[Annotated[str, Field(pattern=SITE_NAME_PATTERN)], P] = Field(
        min_length=1, description="partitions offered, by the site's partition name"
    )
    reservations: dict[Annotated[str, Field(pattern=SITE_NAME_PATTERN)], Reservation] = Field(
        default_factory=dict, description="reservations people may choose, by name"
    )
    access: list[AccessGrant] = Field(
        default_factory=list, description="who gets which accounts and projects"
    )
    poll_interval: float = Field(
        default=1.0, ge=0.1, le=60, description="seconds between looks at a starting job"
    )
    watch_interval: float = Field(
        default=10.0,
        ge=0.1,
        le=600,
        description="seconds between looks at a running lab's job (kind slurm: one listing "
        "of an account's jobs per interval serves all its running labs)",
    )
    queue_timeout: float = Field(
        default=86400, gt=0, description="seconds a job may wait in the queue before it is given up"
    )
    start_timeout: float = Field(
        default=300,
        gt=0,
        le=3600,
        description="seconds from the job running until JupyterLab must answer",
    )
    stop_timeout: float = Field(
        default=60, gt=0, le=600, description="seconds to wait for a cancelled job to end"
    )
    request_timeout: float = Field(
        default=20, gt=0, le=300, description="seconds for one call to the batch system"
    )
    retry_for: float = Field(
        default=60,
        ge=0,
        le=3600,
        description="seconds to keep retrying when the batch system is unreachable or answers 5xx",
    )
    output_lines: int = Field(
        default=20, ge=1, le=500, description="lines of the job's output kept in its last event"
    )

    @field_validator("environment")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return env

    @model_validator(mode="after")
    def _ssh_given(self) -> BatchSystem[P]:
        if self.tunnel == "ssh" and self.ssh is None:
            raise ValueError("tunnel: ssh needs the `ssh` settings (login nodes, user, key)")
        return self

    @model_validator(mode="after")
    def _reservations_known(self) -> BatchSystem[P]:
        for name, res in self.reservations.items():
            for part in res.partitions:
                if part not in self.partitions:
                    raise ValueError(
                        f"reservation {name!r} names partition {part!r}, which is not one of "
                        f"the partitions ({', '.join(self.partitions)})"
                    )
        return self

    def peers(self) -> frozenset[str]:
        return frozenset({"tunnel"}) if self.tunnel == "ssh" else frozenset()

    def vo_choices(self) -> dict[str, list[str]]:
        return {"partitions": list(self.partitions)}

    def choice(self, options: Mapping[str, Any]) -> str:
        return str(options.get("partition") or "")

    def choice_name(self, options: Mapping[str, Any]) -> str | None:
        name = str(options.get("partition", ""))
        part = self.partitions.get(name)
        return (part.display_name or name) if part is not None else (name or None)

    def runtime(self, options: Mapping[str, Any]) -> int | None:
        value = options.get("runtime")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def start_limit(self) -> float:
        return self.queue_timeout + self.start_timeout + 2 * self.retry_for + HUB_MARGIN

    def grants_for(self, user: str, groups: frozenset[str]) -> dict[str, list[str]]:
        """The accounts this person may use here, each with the projects granted with it
        (by the same ``access`` entry), in the file's order."""
        pairs: dict[str, dict[str, None]] = {}
        for grant in self.access:
            if grant.applies_to(user, groups):
                for acc in grant.accounts:
                    name = user if acc == "{user}" else acc
                    if ACCOUNT.fullmatch(name):  # a user name that is no account is skipped
                        pairs.setdefault(name, {}).update(dict.fromkeys(grant.projects))
        return {acc: list(projects) for acc, projects in pairs.items()}
