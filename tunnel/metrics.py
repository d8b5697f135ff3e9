"""The tunnel service's Prometheus metrics, read from its links when a scrape asks.

==================================  =========================================
``lablink_tunnel_forwards``         gauge {system}: forwards held
``lablink_tunnel_link_up``          gauge {system, node}: 1 while the SSH link
                                    to that login node is up, else 0
``lablink_tunnel_reconnects_total`` counter {system, node}: links to that login
                                    node made again after one was lost
``lablink_tunnel_bytes_total``      counter {system, direction}: bytes through
                                    the system's forwards, ``to_lab`` and
                                    ``from_lab``
==================================  =========================================

Every ``tunnel: ssh`` system of the site file and each of its login nodes
(``host:port``, as the health answer names them) is there from the start, at 0
until it is first used. Label values come from the site file alone: never a
lab's id or a person.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.settings import Settings
from backend.sshconfig import SshTunnel

if TYPE_CHECKING:
    from .app import Tunnels


def ssh_systems(settings: Settings) -> dict[str, SshTunnel]:
    """The SSH settings of every system whose labs are reached through the tunnel."""
    out = {}
    for name, system in settings.systems.items():
        ssh = getattr(system, "ssh", None)
        if getattr(system, "tunnel", "none") == "ssh" and ssh is not None:
            out[name] = ssh
    return out


class TunnelMetrics(Collector):
    """The figures of one service's :class:`~tunnel.app.Tunnels`."""

    def __init__(self, tunnels: Tunnels):
        self.tunnels = tunnels
        self.systems = ssh_systems(tunnels.settings)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily,
                                 CounterMetricFamily]:  # fmt: skip
        return (
            GaugeMetricFamily(
                "lablink_tunnel_forwards", "Forwards the tunnel service holds.", labels=["system"]
            ),
            GaugeMetricFamily(
                "lablink_tunnel_link_up",
                "1 while the SSH link to the login node is up, else 0.",
                labels=["system", "node"],
            ),
            CounterMetricFamily(
                "lablink_tunnel_reconnects",
                "SSH links to the login node made again after one was lost.",
                labels=["system", "node"],
            ),
            CounterMetricFamily(
                "lablink_tunnel_bytes",
                "Bytes through the system's forwards (to_lab: from the hub's side).",
                labels=["system", "direction"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        forwards, link_up, reconnects, traffic = self._families()
        tunnels = self.tunnels
        for name, ssh in self.systems.items():
            link = tunnels.links.get(name)
            forwards.add_metric([name], len(link.forwards) if link else 0)
            for login in ssh.login_nodes:
                node = tunnels.nodes.get((login.host, login.port))
                label = [name, f"{login.host}:{login.port}"]
                link_up.add_metric(label, 1 if node is not None and node.up else 0)
                reconnects.add_metric(label, node.restored if node is not None else 0)
            traffic.add_metric([name, "to_lab"], link.traffic.to_lab if link else 0)
            traffic.add_metric([name, "from_lab"], link.traffic.from_lab if link else 0)
        yield from (forwards, link_up, reconnects, traffic)
