"""The site file's part for an HPC system reached through slurmrestd (``kind: slurm``).

Example::

    systems:
      cluster:
        kind: slurm
        display_name: Cluster
        url: https://slurmrestd.example.org:6820
        auth: {key_file: /etc/lablink/slurm/jwt_hs256.key}   # the cluster's JWT key
        setup: ["module load JupyterLab"]
        partitions:
          batch: {nodes: {max: 4}, runtime: {max: 1440}}
          gpu: {gpus: {max: 4, default: 1}}
        access:
          - groups: [hpc-users]
            accounts: ["{user}"]
            projects: [training2026]
        tunnel: ssh
        ssh: {...}                                           # as for kind: unicore

The backend acts for a person's account with a token it mints from the
cluster's JWT key, as ``scontrol token username=<account>`` does. That key can
act as any user of the cluster: keep it readable by the backend alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ...config_base import Strict, https_url
from ..base import SecretMissing
from ..batch.config import BatchSystem, Partition


class JwtAuth(Strict):
    """The cluster's JWT key (``AuthAltParameters=jwt_key=`` in slurm.conf)."""

    key_file: str = Field(
        min_length=1,
        description="the key file (HS256, as slurmctld has it); read once at start; a master "
        "key: readable by the backend alone",
    )
    token_lifespan: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="seconds a token the backend mints lives (it mints a new one before)",
    )


class SlurmSystem(BatchSystem[Partition]):
    """Labs as Slurm batch jobs submitted through slurmrestd's REST API."""

    def peer(self) -> tuple[str, str] | None:
        return "slurmrestd", self.url

    kind: Literal["slurm"] = Field(
        description="'slurm': labs are batch jobs submitted through slurmrestd"
    )
    url: str = Field(
        pattern=r"^https?://[^\s/]+/?$",
        description="slurmrestd's base URL, https://<host>:<port>",
    )
    api_version: str = Field(
        default="v0.0.38",
        pattern=r"^v0\.0\.(38)$",
        description="the version of slurmrestd's API (its openapi plugin, -s openapi/v0.0.38)",
    )
    auth: JwtAuth = Field(description="how the backend mints a token per account")
    gres: str = Field(
        default="gpu",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="the generic resource a lab's GPUs are asked for with (--gres=<gres>:N)",
    )
    poll_interval: float = Field(
        default=0.5, ge=0.1, le=60, description="seconds between looks at a starting job"
    )
    request_timeout: float = Field(
        default=30,
        gt=0,
        le=300,
        description="seconds for one call to slurmrestd (it answers after slurmctld's "
        "MessageTimeout, 10 s by default, when slurmctld does not)",
    )
    job_directory: str = Field(
        default="/tmp",  # noqa: S108 (a directory on the compute nodes, not ours)
        pattern=r"^/[A-Za-z0-9._/-]*$",
        description="a directory every compute node has, where a lab's job starts and Slurm "
        "writes its output (lablink-<user>-<job id>.out: people who share it never meet, "
        "even when the cluster's job ids start again); the lab itself runs in the person's home",
    )

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        return https_url(url)

    def secret(self, environ: Mapping[str, str]) -> str | None:
        try:
            key = Path(self.auth.key_file).read_bytes()
        except OSError as exc:
            raise SecretMissing(
                "auth.key_file", f"the JWT key {self.auth.key_file} cannot be read: {exc.strerror}"
            ) from None
        if len(key) < 16:
            raise SecretMissing(
                "auth.key_file", f"the JWT key {self.auth.key_file} is shorter than 16 bytes"
            )
        return key.hex()  # the driver signs with the bytes; a str travels in the context
