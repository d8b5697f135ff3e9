"""A Kubernetes API server for the cloud tests: kmock's emulator as a real HTTP server
(tests/helpers/kube.py), one per test. Without kmock the test fails in CI and skips
elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.peers import peer_missing


def kmock_missing() -> str | None:
    """Why kmock cannot be imported, or None."""
    try:
        import kmock  # noqa: F401
    except ImportError as exc:
        return repr(exc)
    return None


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    """A fresh, empty emulator per test (it starts in about half a second)."""
    what = "Kubernetes API emulator (kmock)"
    if problem := kmock_missing():
        peer_missing(what, problem)
    api = KubeApi(tmp_path / "kube")
    try:
        api.start()
    except KubeError as exc:
        peer_missing(what, str(exc))
    try:
        yield api
    finally:
        api.stop()
