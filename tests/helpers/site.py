"""Site files for the tests: the one place that builds a site document (the
backend's YAML settings: ``tokens``, ``systems``, ...).

``doc`` builds the document; the ``*_system`` functions build one system of a kind,
with ``**changes`` on top; ``settings`` parses a document as the backend does, and
``write`` puts it in a file for a service started as a subprocess::

    doc = site.doc(tmp_path / "state", database_url, systems={"hpc": site.unicore_system(url)})
    settings = site.settings(doc)

A test that needs another shape of site changes the document it gets (``vos=...``,
``userlab_manager=...`` go in as ``**extra``), rather than writing one of its own:
tests/test_layout.py holds every other module to that. (tests/test_settings.py
writes raw YAML, as its subject is the parser's account of lines.)
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from backend.settings import Settings, parse_settings
from tests.helpers.devsite import PASSWORD_ENV
from tests.helpers.labs import FAKELAB, fakelab_command
from tests.helpers.slurm import ACCOUNTS, SYSTEM_PYTHON

# -- tokens: the backend's callers, by the environment variable that holds each secret

HUB_TOKEN_ENV = "LABLINK_TEST_HUB_TOKEN"
ADMIN_TOKEN_ENV = "LABLINK_TEST_ADMIN_TOKEN"
# the key that seals lab_secrets (replicas.key_env's default), one per test session
STATE_KEY_ENV = "LABLINK_STATE_KEY"
STATE_KEY = secrets.token_hex(32)
TOKENS = [
    {"name": "hub", "secret_env": HUB_TOKEN_ENV, "role": "hub"},
    {"name": "admin", "secret_env": ADMIN_TOKEN_ENV, "role": "admin"},
]


IDENTITY = {"namespace": "geant:h-df.de", "authority": "login.helmholtz.de"}


def hub_token(secret_env: str = HUB_TOKEN_ENV) -> list[dict[str, str]]:
    """Only a hub's token: for the services beside the backend (the tunnel service, the
    UserLab Manager), and for sites that are parsed but never served."""
    return [{"name": "hub", "secret_env": secret_env}]


# -- the document -------------------------------------------------------------------


def doc(
    state_dir: Path | None,
    database_url: str | None = None,
    *,
    systems: dict[str, dict[str, Any]] | None = None,
    default_system: str | None = None,
    tokens: list[dict[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A site document: ``systems`` (one local system, ``local``, unless given), the
    first of them the default unless ``default_system`` says otherwise, the hub's and an
    admin's token unless ``tokens`` says otherwise, the demo login (``login: demo``, so
    that a local system may run labs in the test's own account) and ``extra`` top-level
    settings. Without ``state_dir`` or ``database_url`` the backend's defaults hold."""
    systems = systems if systems is not None else {"local": local_system()}
    document: dict[str, Any] = {"site_name": "Lablink tests"}
    if state_dir is not None:
        document["state_dir"] = str(state_dir)
    if database_url is not None:
        document["database_url"] = database_url
    document["tokens"] = [dict(token) for token in (TOKENS if tokens is None else tokens)]
    document["login"] = "demo"
    # the entitlements the tests' provider issues: urn:geant:h-df.de:...#login.helmholtz.de
    document["identity"] = dict(IDENTITY)
    document["default_system"] = default_system or next(iter(systems))
    document["systems"] = systems
    document.update(extra)
    return document


def settings(document: dict[str, Any], source: str = "test") -> Settings:
    """The document as the backend reads it (``source`` names it in errors)."""
    return parse_settings(yaml.safe_dump(document, sort_keys=False), source)


def write(document: dict[str, Any], path: Path) -> Path:
    """The document as a site file at ``path``, for a service that reads one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# -- systems, one of each kind ----------------------------------------------------------


def local_system(**changes: Any) -> dict[str, Any]:
    """Labs are tests/fakelab.py, processes on this machine, in the test's own account
    (as root too: fakelab is no JupyterLab, and a test says so with allow_root)."""
    system: dict[str, Any] = {
        "kind": "local",
        "display_name": "Test machine",
        "command": FAKELAB,
        "start_timeout": 20,
        "stop_grace": 3,
        "allow_root": os.geteuid() == 0,
    }
    system.update(changes)
    return system


def unicore_system(url: str, **changes: Any) -> dict[str, Any]:
    """The UNICORE development site at ``url`` (tests/helpers/devsite.py,
    ``run_devsite``): the backend logs in as ``lablink`` (password in PASSWORD_ENV) and
    runs jobs as alice or bob; labs are tests/fakelab.py on this machine."""
    system: dict[str, Any] = {
        "kind": "unicore",
        "display_name": "Test HPC",
        "url": url,
        "auth": {"method": "basic", "username": "lablink", "password_env": PASSWORD_ENV},
        "lab_command": FAKELAB,
        "environment": {
            "LABLINK_LAB_HOST": "127.0.0.1",
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        },
        "lab_hosts": ["127.0.0.1"],
        "poll_interval": 0.2,
        "watch_interval": 0.3,
        "retry_for": 1,
        "request_timeout": 5,
        "start_timeout": 30,
        "stop_timeout": 15,
        "partitions": {
            "batch": {"nodes": {"max": 1}, "runtime": {"min": 1, "max": 60, "default": 10}},
            "devel": {"runtime": {"min": 1, "max": 60, "default": 10}},
        },
        "access": [{"users": ["alice", "bob"], "accounts": ["{user}"], "projects": ["p1"]}],
    }
    system.update(changes)
    return system


def unicore_catalog_system(**changes: Any) -> dict[str, Any]:
    """A UNICORE system with every kind of choice, for the catalog, the options and the
    job descriptions: partitions with nodes, GPUs and a login node, a reservation,
    access by user and by group. Nothing answers at its URL."""
    system: dict[str, Any] = {
        "kind": "unicore",
        "display_name": "Test HPC",
        "url": "http://127.0.0.1:8040/DEVSITE/rest/core",
        "auth": {"method": "basic", "username": "lablink", "password_env": "UNICORE_PW"},
        "setup": ["module load JupyterLab"],
        "environment": {"LABLINK_LAB_HOST": "127.0.0.1"},
        "partitions": {
            "batch": {
                "nodes": {"min": 1, "max": 4},
                "runtime": {"min": 10, "max": 120, "default": 30},
            },
            "gpus": {"gpus": {"min": 1, "max": 4, "default": 2}},
            "login": {"interactive": True, "login_node": "login*"},
        },
        "reservations": {"workshop": {"partitions": ["batch"]}},
        "access": [
            {"users": ["alice"], "accounts": ["alice", "alice2"], "projects": ["p1", "p2"]},
            {"groups": ["trainees"], "accounts": ["{user}"], "projects": ["training"]},
        ],
    }
    system.update(changes)
    return system


def tunnel_system(ssh: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An HPC system as the tunnel service sees it: its labs are reached through the
    login node ``ssh`` (nothing answers at its URL)."""
    system: dict[str, Any] = {
        "kind": "unicore",
        "url": "http://127.0.0.1:9/TEST/rest/core",
        "tunnel": "ssh",
        "ssh": ssh,
        "partitions": {"batch": {}},
    }
    system.update(changes)
    return system


NAMESPACE = "lablink-labs"
IMAGE = "quay.io/jupyter/scipy-notebook:2025-01-06"


def kubernetes_system(**changes: Any) -> dict[str, Any]:
    """A cloud system whose labs are reached at their pod's IP (the tests play the
    kubelet and give each pod a loopback address)."""
    system: dict[str, Any] = {
        "kind": "kubernetes",
        "display_name": "Test Cloud",
        "namespace": NAMESPACE,
        "reach": "pod_ip",
        "flavors": {
            "small": {"cpu": 1, "memory": 2, "cpu_request": 0.5, "memory_request": 1},
            "gpu": {"cpu": 8, "memory": 32, "gpus": 1},
        },
        "images": [{"image": IMAGE, "display_name": "SciPy"}],
        "image_patterns": ["quay.io/jupyter/*"],
        "poll_interval": 0.2,
        "retry_for": 2,
        "start_timeout": 30,
    }
    system.update(changes)
    return system


def slurm_system(url: str, key_file: Path, **changes: Any) -> dict[str, Any]:
    """slurmrestd at ``url`` with the cluster's JWT key (tests/helpers/slurm.py,
    ``SlurmRest``): jobs run as lablink-alice or lablink-bob, and their labs are
    tests/fakelab.py, run by the system's Python (the people's accounts cannot run the
    backend's)."""
    system: dict[str, Any] = {
        "kind": "slurm",
        "display_name": "Test cluster",
        "url": url,
        "auth": {"key_file": str(key_file)},
        "lab_command": fakelab_command(SYSTEM_PYTHON),
        "environment": {
            "LABLINK_LAB_HOST": "127.0.0.1",
            "LABLINK_LAB_BIND": "127.0.0.1",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        },
        "lab_hosts": ["127.0.0.1"],
        "poll_interval": 0.2,
        "watch_interval": 0.3,
        "retry_for": 2,
        "start_timeout": 30,
        "stop_timeout": 15,
        "partitions": {
            "batch": {
                "runtime": {"min": 1, "max": 60, "default": 10},
                "gpus": {"min": 0, "max": 2},
            },
            "devel": {"runtime": {"min": 1, "max": 60, "default": 10}},
        },
        "access": [
            {"users": [person], "accounts": [account], "projects": ["p1"]}
            for person, account in ACCOUNTS.items()
        ],
    }
    system.update(changes)
    return system


# -- the sites of the services beside the backend ------------------------------------------


def tunnel_service_doc(
    state_dir: Path, ssh: dict[str, Any], ports: tuple[int, int] = (20000, 29999)
) -> dict[str, Any]:
    """The tunnel service's site: one HPC system ``hpc`` whose labs are reached through
    ``ssh``, local ports from ``ports``."""
    return doc(
        state_dir,
        systems={"hpc": tunnel_system(ssh)},
        tokens=hub_token(),
        tunnel_service={"ports": {"min": ports[0], "max": ports[1]}},
    )


def userlab_manager_doc(state_dir: Path, kubeconfig: Path, **changes: Any) -> dict[str, Any]:
    """The UserLab Manager's site: one cloud system ``cloud`` (``changes`` on top of
    ``kubernetes_system``) in the cluster of ``kubeconfig``."""
    return doc(
        state_dir,
        systems={"cloud": kubernetes_system(**changes)},
        tokens=hub_token(),
        userlab_manager={"kubeconfig": str(kubeconfig)},
    )


def with_metrics(document: dict[str, Any], **metrics: Any) -> dict[str, Any]:
    """``document`` with the site's ``metrics`` block (issue 18) set to ``metrics``."""
    return {**document, "metrics": metrics}
