"""The site file's parts for SSH tunnels: the tunnel service, and how a system's
labs are reached through its login nodes (``tunnel: ssh``).

Example::

    tunnel_service:
      url: http://127.0.0.1:8020
      token_env: LABLINK_TUNNEL_TOKEN
      ports: {min: 9000, max: 9999}
    systems:
      hpc:
        kind: unicore
        tunnel: ssh
        ssh:
          login_nodes: [{host: login1.example.org}, {host: login2.example.org}]
          user: lablink
          key_file: /etc/lablink/ssh/id_ed25519
          known_hosts: /etc/lablink/ssh/known_hosts
          destinations: [{hosts: "jwc*", ports: {min: 1024, max: 65535}}]
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from .config_base import Strict

HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$"


class PortRange(Strict):
    min: int = Field(default=1024, ge=1, le=65535, description="lowest port")
    max: int = Field(default=65535, ge=1, le=65535, description="highest port")

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        return self

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.min <= port <= self.max


class LoginNode(Strict):
    host: Annotated[str, Field(pattern=HOST_PATTERN)] = Field(description="the login node")
    port: int = Field(default=22, ge=1, le=65535, description="its SSH port")


class Destination(Strict):
    """Where labs of the system may be forwarded to (compute nodes, ports)."""

    hosts: str = Field(
        max_length=255,
        pattern=r"^[A-Za-z0-9.*?\[\]-]+$",
        description="a shell-style pattern of compute node names or addresses",
    )
    ports: PortRange = Field(default_factory=PortRange, description="the ports allowed")


def _default_ports() -> PortRange:
    return PortRange(min=9000, max=9999)


class SshTunnel(Strict):
    """How the tunnel service reaches a system's compute nodes."""

    login_nodes: list[LoginNode] = Field(
        min_length=1, description="login nodes; the first that answers carries the forwards"
    )
    user: str = Field(
        pattern=r"^[a-z_][a-z0-9_.-]{0,31}$", description="the SSH user on the login nodes"
    )
    key_file: str = Field(min_length=1, description="the private key (readable by the service)")
    known_hosts: str = Field(
        min_length=1,
        description="a known_hosts file with the login nodes' host keys (checked; no trust on "
        "first use)",
    )
    destinations: list[Destination] = Field(
        min_length=1, description="the compute nodes and ports forwards may go to"
    )
    keepalive: float = Field(default=15, gt=0, le=600, description="seconds between SSH keepalives")
    connect_timeout: float = Field(
        default=10, gt=0, le=300, description="seconds for one connection attempt"
    )


class TunnelService(Strict):
    """Where the backend finds the tunnel service, and what the service binds."""

    url: str = Field(
        default="http://127.0.0.1:8020",
        pattern=r"^https?://[^\s/]+/?$",
        description="the tunnel service's base URL",
    )
    token_env: str = Field(
        default="LABLINK_TUNNEL_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable holding the token between backend and service",
    )
    bind: str = Field(
        default="127.0.0.1", description="the address local forwards listen on (the hub's side)"
    )
    ports: PortRange = Field(
        default_factory=_default_ports, description="the ports local forwards may use"
    )
