"""Run the UNICORE development site (``lablink unicore-devsite``) as a subprocess, as
an admin would, and talk to it with pyunicore or plain HTTP."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pyunicore import client as unicore
from pyunicore.credentials import OIDCToken, UsernamePassword

from backend.procs import free_port
from tests.helpers.stack import end_process, launch

USERS = {"alice": ("alice", "alice2"), "bob": ("bob",)}


@dataclass
class Devsite:
    """A running development site with the users alice (uids alice, alice2) and bob,
    and a bearer token for alice."""

    workdir: Path
    log: Path
    site: str = "TESTSITE"
    passwords: dict[str, str] = field(default_factory=dict)
    token: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # the command line's options of the last start
    env: Mapping[str, str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.site}/rest/core"

    def credential(self, user: str = "alice") -> UsernamePassword:
        return UsernamePassword(user, self.passwords[user])

    def token_credential(self) -> OIDCToken:
        return OIDCToken(self.token)

    def client(self, user: str = "alice") -> unicore.Client:
        return unicore.Client(self.credential(user), self.url)

    def http(self, user: str | None = "alice") -> httpx.Client:
        auth = (user, self.passwords[user]) if user else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=30, trust_env=False)

    def start(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 30) -> None:
        """Start the site; a second start (see ``restart``) keeps the port and the logins."""
        if not self.port:
            self.passwords = {name: secrets.token_urlsafe(12) for name in USERS}
            self.token = secrets.token_urlsafe(24)
            self.port = free_port()
        self.args, self.env = args, env
        secrets_env = {f"DEVSITE_PW_{n.upper()}": self.passwords[n] for n in USERS}
        argv = [
            sys.executable, "-m", "backend.cli", "unicore-devsite",
            "--port", str(self.port), "--site", self.site, "--workdir", str(self.workdir),
            "--token-env", "DEVSITE_TOKEN:alice", "--log-level", "debug", *args,
        ]  # fmt: skip
        for name, uids in USERS.items():
            argv += ["--user", f"{name}:env:DEVSITE_PW_{name.upper()}:{','.join(uids)}"]
        environ = {**(env if env is not None else os.environ), **secrets_env}
        environ["DEVSITE_TOKEN"] = self.token

        def ready() -> bool:  # every resource needs a login: 401 means it serves
            return httpx.get(self.url, timeout=1, trust_env=False).status_code == 401

        self.proc = launch(argv, environ, self.log, ready, "the devsite", timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        return end_process(self.proc, sig, timeout)

    def restart(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the site (killed, by default, as in a crash) and start it again with the
        same options, port, workdir and logins: clients go on with the same URLs."""
        self.stop(sig)
        self.start(*self.args, env=self.env)

    def log_text(self, last: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-last:] if self.log.exists() else ""


def shell_job(script: str, **extra: Any) -> dict[str, Any]:
    """A job that runs ``script`` with sh; quoted, as its one argument reaches a shell."""
    return {"Executable": "/bin/sh", "Arguments": ["-c", shlex.quote(script)], **extra}


def read(wd: unicore.Storage, path: str) -> str:
    """A file of a job's working directory, through the storage API."""
    with wd.stat(path).raw() as response:
        return response.read().decode()


def wait_status(job: Any, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
    """Poll a pyunicore Job (sync) until its status is one of ``statuses``."""
    job.cache_time = 0
    deadline = time.monotonic() + timeout
    while True:
        props: dict[str, Any] = job.properties
        if props["status"] in statuses:
            return props
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {props['status']}, wanted {statuses}: {props['log']}")
        time.sleep(0.1)


async def wait_status_async(job: Any, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
    """Poll a pyunicore.aio Job until its status is one of ``statuses``."""
    import asyncio

    job.cache_time = 0
    deadline = time.monotonic() + timeout
    while True:
        props: dict[str, Any] = await job.properties
        if props["status"] in statuses:
            return props
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {props['status']}, wanted {statuses}: {props['log']}")
        await asyncio.sleep(0.1)


def local_pid(props: Mapping[str, Any]) -> int:
    """The pid of a local job from its batchSystemID (INTERACTIVE_<host>_<pid>)."""
    bss_id = str(props["batchSystemID"])
    assert bss_id.startswith("INTERACTIVE_"), bss_id
    return int(bss_id.rsplit("_", 1)[1])


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


# -- a development site for the backend's HPC tests ----------------------------------

PASSWORD_ENV = "LABLINK_TEST_UNICORE_PASSWORD"
PASSWORD = "devsite-password-0123456789"


def run_devsite(tmp_path: Path, environ: dict[str, str], *args: str) -> Devsite:
    """The development site with a site-wide login ``lablink`` that may run jobs as
    alice or bob (the accounts the backend asks for)."""
    site = Devsite(workdir=tmp_path / "devsite", log=tmp_path / "devsite.log")
    login = f"lablink:env:{PASSWORD_ENV}:alice,bob"
    site.start(*args, "--user", login, env={**environ, PASSWORD_ENV: PASSWORD})
    site.passwords["lablink"] = PASSWORD
    return site


def site_jobs(site: Devsite) -> list[str]:
    with site.http("lablink") as http:
        return http.get("/jobs").json()["jobs"]  # type: ignore[no-any-return]


def job_processes(site: Devsite) -> list[int]:
    """Live processes working in one of the site's job directories."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd").startswith(str(site.workdir)):
                    found.append(int(entry.name))
    return found
