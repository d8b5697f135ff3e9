"""The site file's part for an HPC system reached through UNICORE (``kind: unicore``).

Example::

    systems:
      hpc:
        kind: unicore
        display_name: JUWELS
        url: https://unicore.example.org/JUWELS/rest/core
        auth: {method: bearer}            # the person's OIDC access token
        setup: ["module load Stages/2026 JupyterLab"]
        partitions:
          batch: {nodes: {max: 4}, runtime: {max: 1440}}
          booster: {gpus: {max: 4, default: 1}}
          login: {interactive: true, login_node: "jwlogin*"}
        reservations:
          workshop: {partitions: [batch]}
        access:
          - groups: [hpc-users]
            accounts: ["{user}"]
            projects: [training2026]
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..config_base import SITE_NAME_PATTERN, Strict
from ..sshconfig import SshTunnel

ACCOUNT = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def is_local_host(host: str) -> bool:
    """Loopback, link-local or unspecified: this machine, not a compute node or gateway."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_unspecified


class Range(Strict):
    """Whole numbers a person may choose, with the value the form starts at."""

    min: int = Field(default=1, ge=0, description="smallest value allowed")
    max: int = Field(default=1, ge=0, description="largest value allowed")
    default: int | None = Field(default=None, description="the form's value; unset: `min`")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        if self.default is not None and not self.min <= self.default <= self.max:
            raise ValueError(f"default ({self.default}) must lie between min and max")
        return self

    @property
    def initial(self) -> int:
        return self.min if self.default is None else self.default


def _nodes() -> Range:
    return Range(min=1, max=1)


def _runtime() -> Range:
    return Range(min=10, max=480, default=60)


def _gpus() -> Range:
    return Range(min=0, max=0)


class Partition(Strict):
    """A batch partition (queue) of the system, or an interactive one on a login node."""

    display_name: str = Field(default="", description="the name people see; unset: the key")
    description: str = Field(default="", description="one line shown beside the name")
    interactive: bool = Field(
        default=False,
        description="true: the lab runs on a login node (UNICORE job type ON_LOGIN_NODE), "
        "not as a batch job",
    )
    login_node: str = Field(
        default="",
        max_length=128,
        pattern=r"^[A-Za-z0-9.*?_-]*$",
        description="for interactive partitions: the login node (a name or pattern UNICORE "
        "accepts); unset: UNICORE chooses",
    )
    nodes: Range = Field(default_factory=_nodes, description="nodes per lab")
    runtime: Range = Field(default_factory=_runtime, description="wall time in minutes")
    gpus: Range = Field(default_factory=_gpus, description="GPUs per node")


class Reservation(Strict):
    display_name: str = Field(default="", description="the name people see; unset: the key")
    partitions: list[Annotated[str, Field(pattern=SITE_NAME_PATTERN)]] = Field(
        min_length=1, description="the partitions the reservation is for"
    )


class AccessGrant(Strict):
    """Accounts and projects given to some users or groups (until OIDC entitlements do it)."""

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
        default_factory=list, description="projects (budgets) jobs may be charged to"
    )

    @model_validator(mode="after")
    def _for_someone(self) -> AccessGrant:
        if not self.users and not self.groups:
            raise ValueError("a grant needs 'users' or 'groups'")
        return self

    def applies_to(self, user: str, groups: frozenset[str]) -> bool:
        return "*" in self.users or user in self.users or bool(groups & set(self.groups))


class BasicAuth(Strict):
    method: Literal["basic"] = Field(description="'basic': one site-wide login (development)")
    username: str = Field(min_length=1, max_length=128, description="the UNICORE user name")
    password_env: str = Field(
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable that holds the password",
    )


class BearerAuth(Strict):
    method: Literal["bearer"] = Field(
        description="'bearer': the person's OIDC access token, handed over by the hub"
    )


UnicoreAuth = Annotated[BasicAuth | BearerAuth, Field(discriminator="method")]


class UnicoreSystem(Strict):
    """Labs as UNICORE jobs (batch or on a login node) on an HPC system."""

    kind: Literal["unicore"] = Field(description="'unicore': labs are jobs submitted to UNICORE/X")
    display_name: str = Field(default="", description="the name people see in the form")
    description: str = Field(default="", description="one line shown beside the name")
    url: str = Field(
        pattern=r"^https?://[^\s]+/rest/core/?$",
        description="UNICORE/X base URL, https://<gateway>/<SITE>/rest/core",
    )
    auth: UnicoreAuth = Field(
        default_factory=lambda: BearerAuth(method="bearer"),
        description="how the backend authenticates to UNICORE: {method: bearer} or "
        "{method: basic, username, password_env}",
    )
    ca_bundle: str = Field(
        default="", description="a CA file for UNICORE's TLS certificate; unset: the system's"
    )
    user_preferences: bool = Field(
        default=True,
        description="send X-UNICORE-User-Preferences uid:<account>,group:<project>",
    )
    gpu_resource: str = Field(
        default="GPUS",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$",
        description="the name of the site's GPUs-per-node resource in job descriptions",
    )
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
        description="host name patterns (shell-style) a lab may report in lab.json; others "
        "are refused, and so are loopback and link-local addresses unless a pattern other "
        "than '*' names them",
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
    lab_args: list[str] = Field(default_factory=list, description="extra arguments for it")
    partitions: dict[Annotated[str, Field(pattern=SITE_NAME_PATTERN)], Partition] = Field(
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
        default=10.0, ge=0.1, le=600, description="seconds between looks at a running lab's job"
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
        default=60, gt=0, le=600, description="seconds to wait for an aborted job to end"
    )
    request_timeout: float = Field(
        default=20, gt=0, le=300, description="seconds for one call to UNICORE"
    )
    retry_for: float = Field(
        default=60,
        ge=0,
        le=3600,
        description="seconds to keep retrying when UNICORE is unreachable or answers 5xx",
    )
    token_wait: float = Field(
        default=120,
        ge=0,
        le=3600,
        description="with auth bearer: seconds a restarted backend waits for the hub to hand "
        "over the person's token (the hub does with every poll) before it gives a lab up",
    )
    output_lines: int = Field(
        default=20, ge=1, le=500, description="lines of the job's output kept in its last event"
    )

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        host = urlsplit(url).hostname or ""
        if url.startswith("http://") and not is_local_host(host):
            raise ValueError(
                "use https:// (plain http is allowed only for 127.0.0.1 and localhost, "
                "where tokens do not cross a network)"
            )
        return url

    @field_validator("environment")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return env

    @model_validator(mode="after")
    def _ssh_given(self) -> UnicoreSystem:
        if self.tunnel == "ssh" and self.ssh is None:
            raise ValueError("tunnel: ssh needs the `ssh` settings (login nodes, user, key)")
        return self

    @model_validator(mode="after")
    def _reservations_known(self) -> UnicoreSystem:
        for name, res in self.reservations.items():
            for part in res.partitions:
                if part not in self.partitions:
                    raise ValueError(
                        f"reservation {name!r} names partition {part!r}, which is not one of "
                        f"the partitions ({', '.join(self.partitions)})"
                    )
        return self

    def grants_for(self, user: str, groups: frozenset[str]) -> tuple[list[str], list[str]]:
        """The accounts and projects this person may use here, in the file's order."""
        accounts: dict[str, None] = {}
        projects: dict[str, None] = {}
        for grant in self.access:
            if grant.applies_to(user, groups):
                for acc in grant.accounts:
                    name = user if acc == "{user}" else acc
                    if ACCOUNT.fullmatch(name):  # a user name that is no account is skipped
                        accounts[name] = None
                projects.update(dict.fromkeys(grant.projects))
        return list(accounts), list(projects)
