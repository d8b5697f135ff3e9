"""Real peers for SSH tunnel tests: an OpenSSH sshd on 127.0.0.1 and a "compute node"
HTTP server to forward to.

``Sshd`` runs ``/usr/sbin/sshd -D`` as a child of the test process, in its own
directory, with a fresh ed25519 host key, a user key pair that it authorizes,
and a ``known_hosts`` file that names its host key for ``[127.0.0.1]:<port>``, so
clients check the host key as they would on a site. ``HttpBackend`` answers every
GET with one write (headers and body together: a server that writes them apart
costs ~44 ms per response through a tunnel, Nagle against delayed ACKs) and
streams ``/big?bytes=N`` for throughput tests.

Tests take started ones from the ``sshd`` and ``http_backend`` fixtures
(tests/plugins/sshd.py). The benchmark (``benchmarks/tunnel.py``) uses the classes directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from backend.loginnode import SSHD, TUNNEL_USER, LoginNodeFiles, banner


class SshdError(RuntimeError):
    """sshd did not start (the message has the end of its log)."""


def _proc_children() -> dict[int, list[int]]:
    """Every process's children, read from /proc (parent pid -> child pids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendant_levels(pid: int) -> list[list[int]]:
    """The descendants of ``pid`` by generation: children, grandchildren, ..."""
    tree = _proc_children()
    levels: list[list[int]] = []
    level = list(tree.get(pid, []))
    while level:
        levels.append(level)
        level = [child for parent in level for child in tree.get(parent, [])]
    return levels


def descendants(pid: int) -> list[int]:
    """The pids of all descendants of ``pid`` (children first)."""
    return [child for level in descendant_levels(pid) for child in level]


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent (a frozen parent cannot reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _kill_descendants(pid: int, timeout: float = 2.0) -> int:
    """SIGKILL every descendant of ``pid``, the youngest generation first, each
    waited for until it is dead. Zombies whose parents were frozen are reaped by
    init once their parents die too; the listener reaps its own children."""
    levels = descendant_levels(pid)
    for level in reversed(levels):
        for child in level:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while not all(_dead(child) for child in level) and time.monotonic() < deadline:
            time.sleep(0.005)
    return sum(len(level) for level in levels)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Sshd(LoginNodeFiles):
    """The login node of backend/loginnode.py as a child of the test process.

    ``user`` is the tunnel account ``lablinktun`` (shell /bin/sh), as a site
    would have one: root's shell start-up files on a developer machine (pyenv
    and the like) must not run in every session. Besides the login node's
    files, ``directory`` holds ``sshd.out`` (anything sshd printed before it
    opened its log). Keys are made on the first ``start()`` and kept by
    ``restart()``; the port is chosen then and kept too.
    """

    start_timeout: float = 10.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    comment: str = "lablink-test"
    netns: str | None = None  # run inside this network namespace (tests/helpers/netns.py)

    def __post_init__(self) -> None:
        self.user = self.user or TUNNEL_USER

    @property
    def out(self) -> Path:
        """Anything sshd printed before it opened its log."""
        return self.directory / "sshd.out"

    # -- the process ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start sshd; return once it answers with its SSH banner (at most
        ``start_timeout`` seconds), or raise ``SshdError`` with its log's end.

        The first start picks a free port (another one if that is taken meanwhile);
        later starts keep it."""
        if self.running:
            return
        if not SSHD.is_file():
            raise SshdError(f"{SSHD} is not installed (openssh-server; `bash .ci/peers.sh start`)")
        tries = 1 if self.port else 3
        for attempt in range(tries):
            self.prepare()
            problem = self._launch()
            if problem is None:
                return
            taken = "Address already in use" in _tail(self.log) + _tail(self.out)
            if not (taken and attempt + 1 < tries):
                raise SshdError(
                    f"sshd on {self.host}:{self.port} did not start: {problem}\n"
                    f"---- {self.out.name}\n{_tail(self.out)}\n"
                    f"---- {self.log.name}\n{_tail(self.log)}"
                )
            self.port = 0  # someone took the port between free_port() and sshd's bind

    def _launch(self) -> str | None:
        """Run sshd and wait for its banner: None when it answers, else what went wrong."""
        with self.out.open("ab") as out:
            argv = self.argv()
            if self.netns:
                argv = ["ip", "netns", "exec", self.netns, *argv]  # it execs: the same pid
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                problem = f"sshd exited with {self.proc.returncode}"
                break
            first = banner(self.host, self.port)
            if first.startswith(b"SSH-2.0-"):
                return None
            problem = f"no SSH banner (got {first[:60]!r})" if first else "port closed"
            time.sleep(0.02)
        self._end()
        return problem

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener, and theirs)."""
        return descendants(self.proc.pid) if self.running and self.proc else []

    def kill_connections(self) -> int:
        """Kill every connection's sshd processes (SIGKILL) but not the listener, as if
        the network dropped them; return how many processes were killed."""
        if not self.running or self.proc is None:
            return 0
        # freeze first (a stopped process cannot fork a session child that would
        # escape to init still holding the socket), then kill them all
        frozen: set[int] = set()
        for _ in range(20):
            new = [pid for pid in descendants(self.proc.pid) if pid not in frozen]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen.update(new)
        return _kill_descendants(self.proc.pid)

    def stop(self) -> None:
        """End the listener (SIGTERM, then SIGKILL after 5 s) and every connection:
        sshd leaves connections running when its listener ends; this does not."""
        self._end()

    def _end(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            # Freeze the listener (a client that reconnects at once must not get in
            # between), end the connections, then the listener.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            self.kill_connections()
            proc.terminate()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop (dropping every connection) and start again on the same port with the
        same host key: known_hosts still matches."""
        self.stop()
        self.start()

    # -- for clients -----------------------------------------------------------

    def ssh_argv(
        self,
        *options: str,
        command: Sequence[str] = (),
        known_hosts: Path | None = None,
        ssh: str = "ssh",
    ) -> list[str]:
        """An OpenSSH client command line for this sshd, ``ssh <defaults> <options>
        <user>@127.0.0.1 <command>``: it checks the host key against ``known_hosts``
        (this sshd's own by default) and reads no ssh_config. An ``-o`` option in
        ``options`` does not override one of the defaults (ssh takes the first)."""
        return [
            ssh, "-F", "none", "-p", str(self.port), "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            *options, f"{self.user}@{self.host}", *command,
        ]  # fmt: skip

    def asyncssh_options(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect(**options)`` to this sshd, host
        key checked against ``known_hosts``, no agent, no ~/.ssh/config."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "client_keys": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
            "agent_path": None,
            "config": [],
        }

    def log_text(self, last: int = 6000) -> str:
        return _tail(self.log, last)

    def another_login_node(self, directory: Path) -> Sshd:
        """A second sshd (its own host key and port) that lets in this one's client
        key, started: a system's second login node."""
        directory.mkdir(parents=True, exist_ok=True)
        for path in (self.client_key, self.client_key.with_name(self.client_key.name + ".pub")):
            shutil.copy2(path, directory / path.name)
        other = Sshd(directory, host=self.host, user=self.user)
        other.start()
        return other


def known_hosts_of(path: Path, *servers: Sshd) -> Path:
    """One known_hosts file with the host keys of ``servers``."""
    path.write_text("".join(s.host_key_line() for s in servers))
    return path


# -- a compute node's lab: a small threaded HTTP server --------------------------------

CHUNK = 1 << 20


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            data = sock.recv(4096)
            if not data:
                return
            head += data
        parts = head.split(b"\r\n", 1)[0].split()
        method, target = (parts[0], parts[1].decode("latin-1")) if len(parts) >= 2 else (b"", "")
        url = urlsplit(target)
        self.server.requests += 1
        if method not in (b"GET", b"HEAD"):
            self._answer(b"405 Method Not Allowed", b"only GET\n")
        elif url.path == "/big":
            try:
                size = int(parse_qs(url.query).get("bytes", ["0"])[0])
            except ValueError:
                size = -1
            if size < 0:
                self._answer(b"400 Bad Request", b"bytes=N, N >= 0\n")
            else:
                self._stream(size, head_only=method == b"HEAD")
        else:
            self._answer(b"200 OK", self.server.body, head_only=method == b"HEAD")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def _headers(self, status: bytes, length: int, kind: bytes) -> bytes:
        return (
            b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
            + b"\r\nContent-Length: " + str(length).encode()
            + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip

    def _answer(self, status: bytes, body: bytes, head_only: bool = False) -> None:
        """Headers and body in ONE write."""
        headers = self._headers(status, len(body), b"text/plain")
        self.request.sendall(headers if head_only else headers + body)

    def _stream(self, size: int, head_only: bool) -> None:
        sock: socket.socket = self.request
        sock.sendall(self._headers(b"200 OK", size, b"application/octet-stream"))
        if head_only:
            return
        chunk = memoryview(self.server.chunk)
        left = size
        while left > 0:
            n = min(left, CHUNK)
            sock.sendall(chunk[:n])
            left -= n


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    body: bytes
    chunk: bytes
    requests: int


@dataclass
class HttpBackend:
    """An HTTP server on ``host:port`` playing a lab on a compute node.

    ``GET <anything>`` answers 200 with ``body`` (headers and body in one write);
    ``GET /big?bytes=N`` streams N bytes in 1 MiB writes from one buffer.
    Every response closes the connection (HTTP/1.0 style: read to EOF).
    """

    host: str = "127.0.0.1"
    port: int = 0
    body: bytes = b"hello from the compute node\n"
    _server: _Server | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> int:
        """How many requests it has answered so far."""
        return self._server.requests if self._server else 0

    def start(self) -> None:
        if self._server is not None:
            return
        server = _Server((self.host, self.port), _Handler)
        server.body = self.body
        server.chunk = bytes(CHUNK)
        server.requests = 0
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"http-backend-{self.port}",
        )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None


def lab_tls(ca_file: str | Path) -> ssl.SSLContext:
    """What a lab's Python trusts for the hub's API: its start script's bundle, the
    system's CAs and the hub forward's (``SSL_CERT_FILE``)."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def http_get(
    host: str,
    port: int,
    path: str = "/",
    timeout: float = 5,
    tls: ssl.SSLContext | None = None,
    headers: str = "",
) -> tuple[int, bytes]:
    """One HTTP/1.0 GET on a new TCP connection (TLS with ``tls``, the host name
    checked), read to EOF: (status, body)."""
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
        if tls is not None:
            sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n{headers}\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        raise ConnectionError(f"no HTTP answer from {host}:{port}: {bytes(data[:80])!r}")
    return int(head.split()[1]), body


async def http_get_async(
    host: str, port: int, path: str = "/", timeout: float = 5
) -> tuple[int, bytes]:
    """``http_get`` for async tests (whose event loop may carry the tunnel)."""

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    data = await asyncio.wait_for(get(), timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        raise ConnectionError(f"no HTTP answer from {host}:{port}: {data[:80]!r}")
    return int(head.split()[1]), body
