"""A Kubernetes API server for the cloud tests: kmock's emulator as a real HTTP server
(tests/helpers/kube.py), one per test (``kube``) or per test module (``module_kube``,
for a module whose stack keeps a UserLab Manager on it); and ``jupyter_node``, the
emulated cluster's node that runs each pod's lab as a real JupyterLab. Without kmock
the test fails in CI and skips elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.kubelet import JupyterNode
from tests.helpers.peers import peer_missing


def kmock_missing() -> str | None:
    """Why kmock cannot be imported, or None."""
    try:
        import kmock  # noqa: F401
    except ImportError as exc:
        return repr(exc)
    return None


def emulator(directory: Path) -> Iterator[KubeApi]:
    """A fresh, empty emulator in ``directory`` (it starts in about half a second)."""
    what = "Kubernetes API emulator (kmock)"
    if problem := kmock_missing():
        peer_missing(what, problem)
    api = KubeApi(directory)
    try:
        api.start()
    except (KubeError, OSError) as exc:
        peer_missing(what, str(exc))
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    """A fresh, empty emulator per test."""
    yield from emulator(tmp_path / "kube")


@pytest.fixture(scope="module")
def module_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """One emulator for the whole test module."""
    yield from emulator(tmp_path_factory.mktemp("kube"))


@pytest.fixture
def jupyter_node(module_kube: KubeApi, tmp_path: Path) -> Iterator[JupyterNode]:
    """The node of ``module_kube``'s cluster, for one test: it runs the pods' labs as
    JupyterLab processes and ends them when the test ends. Without it, a pod stays
    unscheduled."""
    node = JupyterNode(module_kube, tmp_path / "node")
    node.start()
    try:
        yield node
    finally:
        node.stop()
