"""Reading a service's /metrics the way Prometheus does: the exposition parsed with
prometheus_client's own parser, and the samples looked up by name and labels."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """The samples of one scrape, and the families' declared types."""

    def __init__(self, text: str):
        self.samples: list[Sample] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples.append(Sample(s.name, dict(s.labels), s.value))

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0: none)."""
        return sum(s.value for s in self.find(name, **labels))

    def one(self, name: str, **labels: str) -> float:
        """The value of the one sample of ``name`` with exactly ``labels``; the test
        fails when that series is missing."""
        found = [s for s in self.find(name, **labels) if s.labels == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0].value

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def _parsed(resp: httpx.Response) -> Scrape:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(resp.text)


async def scrape(url: str, token: str | None) -> Scrape:
    """GET ``url`` (a service's /metrics) with the metrics token; the parsed answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        return _parsed(await http.get(url, headers=headers))


def scrape_now(url: str, token: str | None = None) -> Scrape:
    """``scrape`` for a test that runs no event loop (its service is a subprocess)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(trust_env=False, timeout=10) as http:
        return _parsed(http.get(url, headers=headers))
