"""Real peers for SSH tunnel tests (tests/helpers/sshd.py): an OpenSSH sshd on
127.0.0.1 and an HTTP server that plays a lab on a compute node, started for one
test. An sshd that cannot run fails the test in CI and skips it elsewhere."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.peers import peer_missing
from tests.helpers.sshd import HttpBackend, Sshd, SshdError


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A started OpenSSH sshd on 127.0.0.1 for one test (fails in CI if it cannot run)."""
    server = Sshd(tmp_path / "sshd")
    try:
        server.start()
    except (SshdError, OSError, subprocess.SubprocessError) as exc:
        peer_missing("OpenSSH sshd", str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_backend() -> Iterator[HttpBackend]:
    """A started HTTP server on 127.0.0.1 (a lab on a compute node)."""
    server = HttpBackend()
    server.start()
    try:
        yield server
    finally:
        server.stop()
