"""The OpenSSH sshd peer of tests/helpers/sshd.py: forwards work through it with the
OpenSSH client and with asyncssh, host keys are checked, and it can drop
connections and restart the way the tunnel service's tests need."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from backend.procs import free_port
from tests.helpers.sshd import (
    HttpBackend,
    Sshd,
    http_get,
    http_get_async,
)

pytestmark = pytest.mark.integration


def wait_get(port: int, proc: subprocess.Popen[bytes], timeout: float = 5) -> tuple[int, bytes]:
    """GET / on 127.0.0.1:port once the forward there answers."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"ssh exited with {proc.returncode}: {proc.communicate()[1]!r}")
        try:
            return http_get("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def wait_closed(conn: asyncssh.SSHClientConnection, timeout: float = 5) -> None:
    await asyncio.wait_for(conn.wait_closed(), timeout)
    assert conn.is_closed()


def test_openssh_client_forwards_a_local_port_to_the_lab(
    sshd: Sshd, http_backend: HttpBackend
) -> None:
    local = free_port()
    forward = f"127.0.0.1:{local}:{http_backend.host}:{http_backend.port}"
    argv = sshd.ssh_argv("-N", "-L", forward, "-o", "ExitOnForwardFailure=yes")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_get(local, proc) == (200, http_backend.body)
        status, body = http_get("127.0.0.1", local, "/big?bytes=3000000")
        assert (status, len(body), set(body)) == (200, 3_000_000, {0})
    finally:
        proc.terminate()
        proc.wait(5)
    assert http_backend.requests == 2


def test_an_unknown_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    argv = sshd.ssh_argv(command=["true"], known_hosts=empty)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    # ... and with the right known_hosts the same command gets in.
    ok = subprocess.run(sshd.ssh_argv(command=["true"]), capture_output=True, timeout=10)
    assert ok.returncode == 0, ok.stderr


async def test_asyncssh_checks_the_host_key_and_forwards(
    sshd: Sshd, http_backend: HttpBackend, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(**{**sshd.asyncssh_options(), "known_hosts": str(empty)})

    async with asyncssh.connect(**sshd.asyncssh_options()) as conn:
        listener = await conn.forward_local_port(
            "127.0.0.1", 0, http_backend.host, http_backend.port
        )
        assert await http_get_async("127.0.0.1", listener.get_port()) == (200, http_backend.body)
        listener.close()


async def test_sshd_allows_a_remote_forward_on_loopback(
    sshd: Sshd, http_backend: HttpBackend
) -> None:
    async with asyncssh.connect(**sshd.asyncssh_options()) as conn:
        listener = await conn.forward_remote_port(
            "127.0.0.1", 0, http_backend.host, http_backend.port
        )
        port = listener.get_port()
        assert port > 0
        assert await http_get_async("127.0.0.1", port) == (200, http_backend.body)
        listener.close()


async def test_kill_connections_drops_a_connection_and_the_listener_survives(
    sshd: Sshd,
) -> None:
    conn = await asyncssh.connect(**sshd.asyncssh_options())
    try:
        assert sshd.kill_connections() >= 1
        await wait_closed(conn)
        assert sshd.running
        async with asyncssh.connect(**sshd.asyncssh_options()) as again:
            result = await again.run("echo alive", check=True, timeout=5)
            assert result.stdout == "alive\n"
    finally:
        conn.close()


async def test_restart_keeps_port_and_host_key(sshd: Sshd) -> None:
    port, known_hosts = sshd.port, sshd.known_hosts.read_text()
    conn = await asyncssh.connect(**sshd.asyncssh_options())
    try:
        sshd.restart()
        await wait_closed(conn)  # a restart drops existing connections
    finally:
        conn.close()
    assert (sshd.port, sshd.known_hosts.read_text()) == (port, known_hosts)
    async with asyncssh.connect(**sshd.asyncssh_options()) as again:
        assert (await again.run("true", timeout=5)).exit_status == 0
