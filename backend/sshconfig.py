"""The site file's parts for SSH tunnels: the tunnel service, and how a system's
labs are reached through its login nodes (``tunnel: ssh``).

Example::

    tunnel_service:
      url: http://127.0.0.1:8020
      token_env: LABLINK_TUNNEL_TOKEN
      bind: 127.0.0.1            # where forwards listen
      advertise: ""              # how the proxy reaches them (empty: bind)
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
          hub_forward:
            bind: 0.0.0.0
            port: 25488
            url: "https://login1-int:25488"
            tls: {cert_file: /etc/lablink/hub-forward/cert.pem,
                  key_file: /etc/lablink/hub-forward/key.pem,
                  ca_file: /etc/lablink/hub-forward/ca.pem}

Every login node carries a reverse forward of ``hub_forward.port`` to the hub's
API (``tunnel_service.hub_api``), and the labs' ``JUPYTERHUB_API_URL`` points
there, because compute nodes cannot reach the hub themselves. The tunnel
service serves that port with TLS (``tls.cert_file``, ``tls.key_file``) and the
labs trust ``tls.ca_file`` (:mod:`backend.certs`), so whoever takes the port on
a shared login node gets no hub token.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .config_base import Strict, service_url

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
        pattern=r"^[A-Za-z0-9.*?\[\]:/-]+$",
        description="compute nodes: '*', an address or network ('10.1.0.0/16'), or a name whose "
        "labels are shell-style patterns, each matching one label ('jwc*' is not "
        "'jwc.example.org'); addresses are compared however they are spelled, and loopback "
        "only where a pattern other than '*' names it",
    )
    ports: PortRange = Field(default_factory=PortRange, description="the ports allowed")


class HubForwardTls(Strict):
    """The TLS of the hub's API on the login nodes (``lablink hub-forward-tls`` makes
    these files)."""

    cert_file: str = Field(
        min_length=1,
        description="the certificate (PEM, with its chain) the tunnel service shows labs; "
        "its names must include the host of `url`",
    )
    key_file: str = Field(min_length=1, description="its private key (read by the tunnel service)")
    ca_file: str = Field(
        min_length=1,
        description="the CA (PEM) that signed it: handed to every lab, which trusts it besides "
        "the compute node's own CAs (read by the backend)",
    )


class HubForward(Strict):
    """A reverse forward on every login node, through which labs reach the hub's API
    over TLS they verify."""

    bind: Annotated[str, Field(pattern=HOST_PATTERN)] = Field(
        default="0.0.0.0",  # noqa: S104
        description="the address it listens on, on the login node (anything but loopback "
        "needs `GatewayPorts clientspecified` in the login node's sshd_config)",
    )
    port: int = Field(ge=1024, le=65535, description="the port it listens on, on the login node")
    url: str | None = Field(
        default=None,
        pattern=r"^https://[^\s/?#]+$",
        description="how compute nodes reach it, e.g. https://login1-int:25488 (default: the "
        "first login node's host and `port`); its host must be a name of `tls.cert_file`",
    )
    tls: HubForwardTls = Field(
        description="the certificate the port is served with and the CA labs check it "
        "against: whoever takes the port on a login node learns no token"
    )

    @model_validator(mode="before")
    @classmethod
    def _needs_tls(cls, data: object) -> object:
        if isinstance(data, dict) and "tls" not in data:
            raise ValueError(
                "needs `tls: {cert_file, key_file, ca_file}`: labs reach the hub's API on a "
                "shared login node only over TLS they verify (`lablink hub-forward-tls "
                "--host <login node> DIR` makes the files)"
            )
        return data


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
    hub_forward: HubForward | None = Field(
        default=None,
        description="a reverse forward per login node to the hub's API, for labs whose compute "
        "nodes cannot reach the hub (their JUPYTERHUB_API_URL then points there)",
    )

    def hub_url_for_labs(self) -> str | None:
        """Where labs reach the hub's API (scheme and host:port), or None."""
        fwd = self.hub_forward
        if fwd is None:
            return None
        return fwd.url or f"https://{self.login_nodes[0].host}:{fwd.port}"


class TunnelService(Strict):
    """Where the backend finds the tunnel service, and what the service binds."""

    url: str = Field(
        default="http://127.0.0.1:8020",
        pattern=r"^https?://[^\s/]+/?$",
        description="the tunnel service's base URL: https://, or http:// on this machine or "
        "to a Kubernetes Service of the cluster (`name`, `name.namespace.svc`)",
    )
    ca_bundle: str = Field(
        default="", description="a CA file for the service's TLS certificate; unset: the system's"
    )
    token_env: str = Field(
        default="LABLINK_TUNNEL_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable holding the token between backend and service",
    )
    bind: str = Field(
        default="127.0.0.1", description="the address local forwards listen on (the hub's side)"
    )
    advertise: str = Field(
        default="",
        pattern=rf"^$|{HOST_PATTERN}",
        description="the host the service hands out for a forward (`local_host`: where the "
        "proxy reaches the lab), when that is not `bind`, e.g. the tunnel pod's stable DNS "
        "name in a cluster where it binds 0.0.0.0; empty: `bind`",
    )
    ports: PortRange = Field(
        default_factory=_default_ports, description="the ports local forwards may use"
    )
    hub_api: str = Field(
        default="http://127.0.0.1:8081",
        pattern=r"^http://[^\s/?#:]+:[0-9]{1,5}/?$",
        description="the hub's API as the tunnel service reaches it (JupyterHub's hub_bind_url); "
        "the target of the login nodes' reverse forwards",
    )

    @property
    def local_host(self) -> str:
        """The host a forward is reached at: ``advertise``, else ``bind``."""
        return self.advertise or self.bind

    def hub_address(self) -> tuple[str, int]:
        parts = urlsplit(self.hub_api)
        return parts.hostname or "127.0.0.1", parts.port or 8081

    @field_validator("url")
    @classmethod
    def _remote_is_tls(cls, url: str) -> str:
        return service_url(url)
