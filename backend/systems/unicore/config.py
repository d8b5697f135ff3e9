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

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ...config_base import Strict, https_url
from ..base import SecretMissing
from ..batch.config import BatchSystem, Partition


class UnicorePartition(Partition):
    """A batch partition (queue) of the system, or an interactive one on a login node."""

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


class UnicoreSystem(BatchSystem[UnicorePartition]):
    """Labs as UNICORE jobs (batch or on a login node) on an HPC system."""

    def peer(self) -> tuple[str, str] | None:
        return "unicore", self.url

    kind: Literal["unicore"] = Field(description="'unicore': labs are jobs submitted to UNICORE/X")
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
    watch_interval: float = Field(
        default=30.0,
        ge=0.1,
        le=600,
        description="seconds between looks at a running lab's job; UNICORE lists jobs without "
        "their states, so each running lab costs one request per interval (30 s: a lab that "
        "ended by itself is noticed about when the hub's own poll would notice it)",
    )
    token_wait: float = Field(
        default=120,
        ge=0,
        le=3600,
        description="with auth bearer: seconds a restarted backend waits for the hub to hand "
        "over the person's token (the hub does with every poll) before it gives a lab up",
    )

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        return https_url(url)

    def secret(self, environ: Mapping[str, str]) -> str | None:
        if self.auth.method != "basic":
            return None
        secret = environ.get(self.auth.password_env, "")
        if not secret:
            raise SecretMissing(
                "auth",
                f"the environment variable {self.auth.password_env} must hold the UNICORE password",
            )
        return secret
