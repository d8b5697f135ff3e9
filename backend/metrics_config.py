"""The site file's ``metrics`` block: how Prometheus reads each service's metrics
(pure settings; the endpoint itself is :mod:`backend.metrics`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config_base import Strict

Service = Literal["backend", "tunnel", "userlab_manager"]


class MetricsPorts(Strict):
    """The separate metrics port of each service (``access: port``)."""

    backend: int = Field(default=8011, ge=1, le=65535, description="the backend's metrics port")
    tunnel: int = Field(
        default=8021, ge=1, le=65535, description="the tunnel service's metrics port"
    )
    userlab_manager: int = Field(
        default=8031, ge=1, le=65535, description="the UserLab Manager's metrics port"
    )


class MetricsSettings(Strict):
    """Who may read ``/metrics`` of the backend, the tunnel service and the UserLab
    Manager."""

    access: Literal["token", "port", "off"] = Field(
        default="token",
        description="'token': GET /metrics on each service's own port, only with the bearer "
        "token in token_env (no other token opens it, and it opens nothing else); 'port': "
        "/metrics without a token on a port of its own per service (bind, ports), for a "
        "network only the scraper reaches; 'off': no metrics",
    )
    token_env: str = Field(
        default="LABLINK_METRICS_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="access: token — the environment variable holding the scraper's token "
        "(16 characters or more); unset in a service's environment: its /metrics answers 404",
    )
    bind: str = Field(
        default="127.0.0.1",
        description="access: port — the address the metrics ports listen on",
    )
    ports: MetricsPorts = Field(
        default_factory=MetricsPorts, description="access: port — each service's metrics port"
    )
