"""Run the whole stack (`lablink up`) as a subprocess, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from backend.embedded import LocalTunnel
from backend.loginnode import LoginNodeFiles
from backend.procs import free_ports, start_time

REPO = Path(__file__).resolve().parent.parent.parent


def end_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> int:
    """Send ``sig``, wait up to ``timeout`` seconds, then kill; return the exit code."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else 0
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def launch(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    ready: Callable[[], bool],
    what: str,
    timeout: float = 30,
) -> subprocess.Popen[bytes]:
    """Start a service (output to ``log``, from the repository) and wait until
    ``ready()``; raise with the log's end if it exits or does not get ready."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text(errors='replace')[-6000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return proc
        time.sleep(0.05)
    end_process(proc, signal.SIGKILL, 5)
    raise RuntimeError(f"{what} did not come up:\n{log.read_text(errors='replace')[-6000:]}")


def marked_processes(marks: list[str], under: str) -> list[tuple[int, str]]:
    """Live processes (not this one) whose command line holds one of ``marks`` or whose
    working directory is below ``under``: (pid, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if start_time(int(entry.name)) is None:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(m in cmd for m in marks) or os.readlink(entry / "cwd").startswith(under):
                found.append((int(entry.name), cmd))
    return found


@dataclass
class Stack:
    state_dir: Path
    password: str
    users: list[str]
    site: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['hub']}"

    @property
    def log(self) -> Path:
        return self.state_dir / "up.log"

    def __post_init__(self) -> None:
        names = ("hub", "backend", "hub_api", "proxy_api", "devsite", "tunnel", "sshd",
                 "hub_forward")  # fmt: skip
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))

    def local_tunnel(self) -> LocalTunnel:
        """The login node and tunnel `lablink up` runs for this stack's HPC systems."""
        return LocalTunnel(
            LoginNodeFiles(self.state_dir / "ssh", port=self.ports["sshd"]),
            service_port=self.ports["tunnel"],
            hub_api_port=self.ports["hub_api"],
            hub_forward_port=self.ports["hub_forward"],
        )

    def start(self, timeout: float = 90) -> None:
        """`lablink up`, until it says where JupyterHub is."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lablink up exited early:\n{self.log.read_text()[-4000:]}")
            if "JupyterHub is at" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"lablink up did not come up:\n{self.log.read_text()[-4000:]}")

    def launch(self) -> None:
        """Run `lablink up` without waiting for it (its output goes to ``log``)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "backend.cli", "up",
            "--state-dir", str(self.state_dir),
            "--port", str(self.ports["hub"]),
            "--backend-port", str(self.ports["backend"]),
            "--hub-api-port", str(self.ports["hub_api"]),
            "--proxy-api-port", str(self.ports["proxy_api"]),
            "--devsite-port", str(self.ports["devsite"]),
            "--tunnel-port", str(self.ports["tunnel"]),
            "--sshd-port", str(self.ports["sshd"]),
            "--hub-forward-port", str(self.ports["hub_forward"]),
        ]  # fmt: skip
        if self.site:
            argv += ["--site", str(self.site)]
        env = {
            **os.environ,
            "LABLINK_DEMO_PASSWORD": self.password,
            "LABLINK_DEMO_USERS": ",".join(self.users),
            **self.extra_env,
        }
        out = self.log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 90) -> int:
        return end_process(self.proc, sig, timeout)

    def stop_cleanly(self) -> None:
        """Ctrl-C, as a person would: exit code 0 and no process of the stack left."""
        code = self.stop(signal.SIGINT)
        left = self.processes()
        assert code == 0, self.log.read_text()[-3000:]
        assert not left, f"processes left behind after Ctrl-C: {left}"

    def processes(self) -> list[tuple[int, str]]:
        """Live processes that belong to this stack (by state directory or ports)."""
        marks = [str(self.state_dir)] + [f"127.0.0.1:{p}" for p in self.ports.values()]
        return marked_processes(marks, str(self.state_dir))

    def lab_pids(self, user: str) -> list[int]:
        """The jupyterhub-singleuser processes running in a user's directory."""
        home = str(self.state_dir / "users" / user)
        pids = []
        for pid, cmd in self.processes():
            with contextlib.suppress(OSError):
                if "jupyterhub-singleuser" in cmd and os.readlink(f"/proc/{pid}/cwd") == home:
                    pids.append(pid)
        return pids

    def backend_pid(self) -> int | None:
        for pid, cmd in self.processes():
            if "backend.cli backend" in cmd:
                return pid
        return None

    def hub_pid(self) -> int | None:
        for pid, cmd in self.processes():
            if "-m jupyterhub -f" in cmd:
                return pid
        return None

    def hub_answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/hub/api/", timeout=2, trust_env=False).status_code == 200
        return False
