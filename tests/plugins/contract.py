"""The driver contract's test rigs: one system of each kind with its real peer, behind a
real backend, so that the same tests run over every kind (``rig`` is parametrized,
as traefik-proxy runs one test module over all its proxies).

- ``local``: labs are processes here;
- ``unicore``: the UNICORE development site, jobs as local processes;
- ``kubernetes``: the UserLab Manager against the Kubernetes API emulator, with a
  node (tests/helpers/kubelet.py) that runs the pods' labs;
- ``slurm``: the real slurmrestd of the one-node cluster, jobs as lablink-alice.

A ``Rig`` (tests/helpers/rigs.py) is what a test gets: the system, and how to reach
behind the backend to a lab's process, job or pod.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import site
from tests.helpers.devsite import PASSWORD, PASSWORD_ENV, Devsite, run_devsite
from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.kubelet import Kubelet
from tests.helpers.peers import peer_missing
from tests.helpers.rigs import SYSTEM, Rig
from tests.helpers.slurm import SlurmCluster, SlurmRest
from tests.helpers.userlabs import NAMESPACE, UserlabManager

KINDS = ("local", "unicore", "kubernetes", "slurm")


@pytest.fixture(scope="module")
def devsite_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devsite]:
    devsite = run_devsite(
        tmp_path_factory.mktemp("devsite"), dict(os.environ), "--queues", "batch,devel"
    )
    yield devsite
    devsite.stop()


@dataclass
class Cloud:
    kube: KubeApi
    manager: UserlabManager
    kubelet: Kubelet


@pytest.fixture(scope="module")
def cloud_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = tmp_path_factory.mktemp("cloud")
    kube = KubeApi(root / "kube")
    try:
        kube.start()
    except (KubeError, OSError) as exc:
        peer_missing("Kubernetes API emulator (kmock)", str(exc))
    manager = UserlabManager.for_kube(root / "manager", kube)
    manager.site["systems"] = {SYSTEM: manager.site["systems"]["cloud"]}  # as the backend's
    manager.site["default_system"] = SYSTEM
    manager.start()
    kubelet = Kubelet(kube)
    kubelet.start()
    yield Cloud(kube, manager, kubelet)
    kubelet.stop()
    manager.stop()
    kube.stop()


def local_rig(request: pytest.FixtureRequest) -> Rig:
    return Rig("local", site.local_system())


def unicore_rig(request: pytest.FixtureRequest) -> Rig:
    devsite: Devsite = request.getfixturevalue("devsite_peer")
    return Rig("unicore", site.unicore_system(devsite.url), env={PASSWORD_ENV: PASSWORD})


def kubernetes_rig(request: pytest.FixtureRequest) -> Rig:
    cloud: Cloud = request.getfixturevalue("cloud_peer")

    def remains(lab_id: str) -> list[str]:
        return [
            f"pod {p['metadata']['name']}"
            for p in cloud.kube.pods(NAMESPACE)
            if p["metadata"]["name"] == f"lab-{lab_id}"
        ]

    def crash() -> None:
        cloud.kubelet.crash_next = True

    return Rig(
        "kubernetes",
        site.kubernetes_system(),
        env={"LABLINK_USERLAB_MANAGER_TOKEN": cloud.manager.token},
        site_extra={"userlab_manager": {"url": cloud.manager.url}},
        crash=crash,
        crash_output=False,  # the pod's log does not reach the person (the manager's sentence does)
        remains=remains,
    )


def slurm_rig(request: pytest.FixtureRequest) -> Rig:
    cluster: SlurmCluster = request.getfixturevalue("slurm")
    rest: SlurmRest = request.getfixturevalue("slurmrest")

    def remains(lab_id: str) -> list[str]:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %j"],
            env=cluster.env, capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        return [f"job {line}" for line in out.splitlines() if line.endswith(f"lablink-{lab_id}")]

    return Rig("slurm", site.slurm_system(rest.url, rest.key_file), remains=remains)


RIGS = {
    "local": local_rig,
    "unicore": unicore_rig,
    "kubernetes": kubernetes_rig,
    "slurm": slurm_rig,
}
MARKS = {
    "unicore": [pytest.mark.unicore],
    "kubernetes": [pytest.mark.cloud],
    "slurm": [pytest.mark.slurm, pytest.mark.slurm_rest],
}


@pytest.fixture(params=[pytest.param(k, marks=MARKS.get(k, []), id=k) for k in KINDS])
def rig(request: pytest.FixtureRequest, token_env: dict[str, str]) -> Rig:
    """One system of each kind, in turn; its peer is shared by the tests of a module."""
    made = RIGS[request.param](request)
    token_env.update(made.env)  # the backend reads its secrets from here
    return made
