"""The UserLab Manager's Prometheus metrics.

=========================================  ======================================
``lablink_userlab_pods``                   gauge {phase}: the manager's lab pods
                                           by phase, as its watch last saw them;
                                           all five phases, 0 when none
``lablink_userlab_watch_restarts_total``   counter: the pod watch begun again
                                           after an error (a 410 Gone among them)
                                           or an end before its time
=========================================  ======================================

A watch request ends by itself every ``kube.WATCH_SECONDS``; beginning it again
then is its routine and is not counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .app import Labs

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


class ManagerMetrics:
    """The counters of one app, in its own registry."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.watch_restarts = Counter(
            "lablink_userlab_watch_restarts",
            "The pod watch begun again after an error, a 410 Gone or an early end.",
            registry=registry,
        )


class PodPhases(Collector):
    """``lablink_userlab_pods``, counted from the labs' pods when a scrape asks."""

    def __init__(self, labs: Labs):
        self.labs = labs

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "lablink_userlab_pods", "The manager's lab pods by phase.", labels=["phase"]
        )

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(PHASES, 0)
        for pod in self.labs.pods.values():
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            counts[phase if phase in counts else "Unknown"] += 1
        family = self._family()
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family
