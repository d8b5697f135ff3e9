"""The ``local`` driver: each lab is a ``jupyterhub-singleuser`` process here.

For demos and development (the embedded default), and for a machine whose
people have Unix accounts (``run_as: person``). The lab runs in its own
session with a clean environment (the backend's own variables, tokens among
them, are not passed on) and its output in ``labs/<id>/output.log``; in the
backend's own account its working directory is under the state directory,
in another account (``run_as``) that account's home, with its uid, group and
groups, as JupyterHub's LocalProcessSpawner runs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ... import procs
from ...files import private_dir
from ...states import LabState
from ..driver import Driver, LabContext, LabEnded, LabFailed, LabStatus, service_prefix
from .config import LocalSystem

log = logging.getLogger("lablink.backend.local")

# variables of the backend's own environment a lab may see
PASSED_THROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
# the lab's id in its process's environment: a backend that takes a start over finds
# a process an earlier one launched by it (as a batch job by its tag)
LAB_ID_VAR = "LABLINK_LAB_ID"
# variables the driver sets itself and the hub may not override
OWN = frozenset({"PATH", "HOME", "JUPYTERHUB_SERVICE_URL", "PWD", "SHELL", LAB_ID_VAR})


def lab_command(system: LocalSystem, port: int) -> list[str]:
    """The lab's argv (pure). The port travels in the environment, not here."""
    exe = system.command[0]
    if not os.path.isabs(exe):
        # prefer the environment the backend runs in (the .venv of `make up`)
        beside = Path(sys.executable).parent / exe
        exe = str(beside) if beside.exists() else (shutil.which(exe) or exe)
    argv = [exe, *system.command[1:], *system.args]
    if system.allow_root and "--allow-root" not in argv:
        argv.append("--allow-root")
    return argv


def lab_environment(
    hub_env: dict[str, str],
    home: Path,
    port: int,
    prefix: str,
    account: pwd.struct_passwd | None = None,
    lab_id: str = "",
) -> dict[str, str]:
    """The lab's environment (pure): the hub's variables, a PATH, a HOME, the bind URL;
    for a lab in its own account, that account's USER, LOGNAME and SHELL."""
    env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env.update({k: v for k, v in hub_env.items() if k not in OWN})
    path = [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
    env["PATH"] = os.pathsep.join(dict.fromkeys(path))
    env["HOME"] = str(home)
    env["SHELL"] = "/bin/bash"
    if account is not None:
        env["USER"] = env["LOGNAME"] = account.pw_name
        if account.pw_shell and not account.pw_shell.endswith(("nologin", "false")):
            env["SHELL"] = account.pw_shell
    env["JUPYTERHUB_SERVICE_URL"] = f"http://127.0.0.1:{port}{prefix}"
    if lab_id:
        env[LAB_ID_VAR] = lab_id
    return env


LAUNCHED = "launched.json"  # in the lab's run directory: the process as launched
# launches of one lab when another process takes its port before the lab binds it
PORT_TRIES = 3


class PortTaken(LabFailed):
    """The lab process ended during its start, and another process was listening at
    its port: it could not bind it (a new port may do)."""

    def __init__(self, port: int, message: str, detail: str = "") -> None:
        super().__init__(message, detail=detail, reason="ended")
        self.port = port


def note_launched(path: Path, handle: dict[str, Any]) -> None:
    """Write the launched process's handle next to its output (atomically)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(handle))
    part.replace(path)


def launched_before(path: Path) -> dict[str, Any] | None:
    """The handle of a lab process launched earlier and still alive (the same pid
    and start time), else None."""
    try:
        handle = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(handle, dict) or not isinstance(handle.get("pid"), int):
        return None
    if not isinstance(handle.get("port"), int):
        return None
    return handle if procs.is_alive(handle["pid"], handle.get("started")) else None


def launched_elsewhere(lab_id: str, log_path: Path) -> dict[str, Any] | None:
    """The handle of a live process launched for ``lab_id`` by another backend on this
    machine (its own state directory: no record here), found by the lab's id in its
    environment; the first launched when several carry it (its kernels and terminals
    inherit it). None when there is none, or none this backend may read."""
    wanted = f"{LAB_ID_VAR}={lab_id}".encode()
    found: list[tuple[int, int, bytes]] = []
    for entry in procs.PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another account's
            continue
        if wanted not in environ.split(b"\0"):
            continue
        started = procs.start_time(int(entry.name))
        if started is not None:
            found.append((started, int(entry.name), environ))
    if not found:
        return None
    started, pid, environ = min(found)
    variables = dict(v.split(b"=", 1) for v in environ.split(b"\0") if b"=" in v)
    url = urlsplit(variables.get(b"JUPYTERHUB_SERVICE_URL", b"").decode(errors="replace"))
    if not url.port:
        return None
    return {"pid": pid, "started": started, "port": url.port, "prefix": url.path or "/",
            "log": str(log_path)}  # fmt: skip


def lab_account(system: LocalSystem, person: str) -> pwd.struct_passwd | None:
    """The Unix account a lab runs in (None: the backend's own); LabFailed with a
    sentence when there is none to be had."""
    if not system.run_as:
        if os.geteuid() == 0 and not system.allow_root:
            raise LabFailed(
                "This machine would run your lab as root; the site's admins must set run_as "
                "for this system (an unprivileged account, or each person's own)."
            )
        return None
    name = person if system.run_as == "person" else system.run_as
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise LabFailed(
            f"There is no Unix account {name!r} on this machine for your lab; ask the "
            "site's admins to make one."
        ) from None
    if account.pw_uid == 0:
        raise LabFailed(f"The account {name!r} is root; labs never run as root.")
    if os.geteuid() not in (0, account.pw_uid):
        raise LabFailed(
            f"The backend cannot start labs as {name!r} (it does not run as root); ask the "
            "site's admins."
        )
    return account


async def reap(child: subprocess.Popen[bytes], timeout: float | None = None) -> int | None:
    """Wait (through a pidfd, no thread) until the lab's process ends and reap it; its
    exit code, or None if it still runs after ``timeout`` seconds. Until it is reaped
    its pid cannot be reused, so the pidfd is always the child's own."""
    if child.poll() is None:
        await procs.wait_exit(child.pid, None, timeout)
    return child.poll()


class LocalDriver(Driver[LocalSystem]):
    log = logging.getLogger("lablink.backend.local")

    def __init__(self, http: httpx.AsyncClient):
        super().__init__(http)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        # ports handed to labs of this backend that may not listen yet (by lab id)
        self._ports: dict[str, int] = {}

    def _free_port(self, lab_id: str) -> int:
        """A free port no other lab of this backend holds: between choosing a port and
        the lab binding it the kernel may hand the same free port out again (a burst of
        starts met that: two labs, one port, one failed start)."""
        held = set(self._ports.values())
        port = procs.free_port()
        for _attempt in range(100):
            if port not in held:
                break
            port = procs.free_port()
        self._ports[lab_id] = port
        return port

    def _paths(self, ctx: LabContext[LocalSystem]) -> tuple[Path, Path]:
        run_dir = ctx.state_dir / "labs" / ctx.lab_id
        home = ctx.state_dir / "users" / ctx.user_name
        return run_dir, home

    def _output(self, ctx: LabContext[LocalSystem]) -> str:
        log_path = ctx.handle.get("log")
        if not log_path:
            return ""
        return procs.tail(Path(log_path), ctx.system.output_lines)

    async def start(self, ctx: LabContext[LocalSystem]) -> str:
        system: LocalSystem = ctx.system
        account = lab_account(system, ctx.user_name)
        run_dir, home = self._paths(ctx)
        private_dir(run_dir)
        if account is None:
            private_dir(home)
        else:
            home = Path(account.pw_dir)
            if not home.is_dir():
                raise LabFailed(
                    f"The home directory of {account.pw_name!r} ({home}) is missing; ask the "
                    "site's admins."
                )
        launched = run_dir / LAUNCHED
        earlier = launched_before(launched)
        if earlier is None and ctx.resumed:
            earlier = launched_elsewhere(ctx.lab_id, run_dir / "output.log")
        if earlier is not None:
            # launched by a backend that died before it stored the handle (another
            # replica, or this one before a restart): follow that process, start none
            log.info("%s: process %s launched before; following it", ctx.log_name, earlier["pid"])
            self._ports[ctx.lab_id] = earlier["port"]
            await ctx.save(earlier)
            await ctx.progress(
                LabState.STARTING, "The lab process is running; waiting for JupyterLab to answer."
            )
            return await self._wait_ready(ctx, system.start_timeout)
        prefix = service_prefix(ctx)
        as_account: dict[str, Any] = {}
        if account is not None and account.pw_uid != os.geteuid():
            as_account = {
                "user": account.pw_uid,
                "group": account.pw_gid,
                "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid),
            }
        log_path = run_dir / "output.log"
        await ctx.report(LabState.SUBMITTED, "Starting the lab as a process on this machine.")
        for attempt in range(1, PORT_TRIES + 1):
            port = self._free_port(ctx.lab_id)
            argv = lab_command(system, port)
            env = lab_environment(ctx.env, home, port, prefix, account, ctx.lab_id)
            with log_path.open("ab") as out:
                try:
                    # subprocess, not asyncio's: on Python 3.11 asyncio keeps a thread per
                    # child to wait for it (1000 labs, 1000 threads); the end is awaited
                    # with a pidfd instead (``reap``). The fork and exec are as short as
                    # asyncio's own, which makes them in the event loop's thread too.
                    proc = subprocess.Popen(  # noqa: ASYNC220
                        argv,
                        cwd=home,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        **as_account,
                    )
                except OSError as exc:
                    self._ports.pop(ctx.lab_id, None)
                    log.error("%s: cannot run %s: %s", ctx.log_name, argv[0], exc)
                    raise LabFailed(
                        f"The lab command {system.command[0]!r} could not be run on this "
                        "system; ask the site's admins to check its configuration."
                    ) from None
            self.step(ctx, "started %s as process %s", argv[0], proc.pid)
            self._children[ctx.lab_id] = proc
            handle = {
                "pid": proc.pid,
                "started": procs.start_time(proc.pid),
                "port": port,
                "prefix": prefix,
                "log": str(log_path),
            }
            # on this machine at once, before the database hears of it: a backend that
            # takes the start over after this one died finds the process here
            note_launched(launched, handle)
            try:
                await ctx.save(handle)
            except BaseException:
                # not recorded (the backend is shutting down, or the database failed):
                # nothing could find this process again, so it must not outlive us
                procs.signal_group(proc.pid, signal.SIGKILL)
                raise
            log.info("%s: process %s on port %s", ctx.log_name, proc.pid, port)
            if attempt == 1:
                await ctx.report(
                    LabState.STARTING,
                    "The lab process is running; waiting for JupyterLab to answer.",
                )
            try:
                return await self._wait_ready(ctx, system.start_timeout)
            except PortTaken as exc:
                if attempt == PORT_TRIES:
                    raise
                log.warning(
                    "%s: port %s was taken by another process before the lab listened on "
                    "it; starting the lab again on another port",
                    ctx.log_name,
                    exc.port,
                )
        raise AssertionError("unreachable")  # the last try returns or raises

    async def _wait_ready(self, ctx: LabContext[LocalSystem], timeout: float) -> str:
        port = ctx.handle["port"]
        base = f"http://127.0.0.1:{port}"
        probe = f"{base}{ctx.handle['prefix']}api"
        deadline = time.monotonic() + timeout
        delay = 0.02
        taken = False  # someone else answered at the lab's port
        while True:
            st = await self.status(ctx)
            if not st.alive:
                exit_code = st.exit_code
                child = self._children.get(ctx.lab_id)
                if exit_code is None and child is not None:
                    exit_code = await reap(child)  # ended, maybe not yet reaped
                code = f" with exit code {exit_code}" if exit_code is not None else ""
                await self.stop(ctx)
                message = f"The lab process ended during start{code}; its last output is below."
                if taken or procs.listening_inodes(port):  # someone else holds its port
                    raise PortTaken(port, message, detail=self._output(ctx))
                raise LabFailed(message, detail=self._output(ctx), reason="ended")
            try:
                resp = await self.http.get(probe, timeout=2.0)
                if resp.status_code == 200:
                    # the port was free when chosen, but until the lab binds it any process
                    # here may get it: only the lab's own listener makes it ready
                    if procs.listens(ctx.handle["pid"], port) is not False:
                        self.step(ctx, "the lab answers at %s", base)
                        return base
                    if not taken:
                        self.step(ctx, "another process answers at port %s", port)
                    taken = True
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                await self.stop(ctx)
                raise LabFailed(
                    f"JupyterLab did not answer within {timeout:g} seconds; it was stopped.",
                    detail=self._output(ctx),
                    reason="timeout",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    async def status(self, ctx: LabContext[LocalSystem]) -> LabStatus:
        child = self._children.get(ctx.lab_id)
        if child is not None and child.poll() is not None:
            return LabStatus(alive=False, exit_code=child.returncode)
        pid = ctx.handle.get("pid")
        if pid is None:
            return LabStatus(alive=False)
        if procs.is_alive(pid, ctx.handle.get("started")):
            return LabStatus(alive=True)
        return LabStatus(alive=False, exit_code=child.returncode if child else None)

    async def wait_ended(self, ctx: LabContext[LocalSystem]) -> LabStatus:
        child = self._children.get(ctx.lab_id)
        if child is not None:
            await reap(child)
        elif ctx.handle.get("pid"):
            await procs.wait_exit(ctx.handle["pid"], ctx.handle.get("started"))
        return await self.status(ctx)

    async def stop(self, ctx: LabContext[LocalSystem]) -> str:
        child = self._children.get(ctx.lab_id)
        if child is not None and not ctx.handle.get("pid"):
            # stopped before the handle was stored: the child object knows the process
            ctx.handle = {**ctx.handle, "pid": child.pid, "started": None}
        pid = ctx.handle.get("pid")
        started = ctx.handle.get("started")
        if pid is not None and procs.is_alive(pid, started):
            self.step(ctx, "ending process %s and its descendants", pid)
            family = procs.descendants(pid)
            procs.signal_group(pid, signal.SIGTERM)
            if not await self._wait_gone(ctx, ctx.system.stop_grace):
                log.warning("%s: did not stop on SIGTERM; killing it", ctx.log_name)
                procs.signal_group(pid, signal.SIGKILL)
                await self._wait_gone(ctx, 5)
            # kernels and terminals live in sessions of their own
            procs.kill_exact(family, signal.SIGKILL)
        self._children.pop(ctx.lab_id, None)
        self._ports.pop(ctx.lab_id, None)
        if child is not None:
            await reap(child)
        return self._output(ctx)

    async def _wait_gone(self, ctx: LabContext[LocalSystem], timeout: float) -> bool:
        child = self._children.get(ctx.lab_id)
        if child is not None:
            return await reap(child, timeout) is not None
        return await procs.wait_exit(ctx.handle["pid"], ctx.handle.get("started"), timeout)

    async def recover(self, ctx: LabContext[LocalSystem]) -> str | None:
        if not ctx.handle.get("pid"):
            return None
        if not procs.is_alive(ctx.handle["pid"], ctx.handle.get("started")):
            raise LabEnded(
                "The lab's process ended while the backend was not running.",
                detail=self._output(ctx),
            )
        return await self._wait_ready(ctx, ctx.system.start_timeout)
