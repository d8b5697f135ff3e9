"""Helpers for the backend's tests: what the database says about a lab, which
lab processes live, and the shape of error answers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from backend import procs
from backend.db import create_engine
from backend.settings import Settings
from backend.store import Lab, Store

FAKELAB_PATH = Path(__file__).resolve().parent.parent / "fakelab.py"
# every fakelab of this test session carries this word on its command line, so that a
# session ends and counts only its own labs (others may run tests on the same machine)
SESSION = os.environ.setdefault("LABLINK_TEST_SESSION", uuid.uuid4().hex[:12])
SESSION_ARG = f"--lablink-test-session={SESSION}"


def fakelab_command(python: str = sys.executable) -> list[str]:
    """The command of a lab that is tests/fakelab.py."""
    return [python, str(FAKELAB_PATH), SESSION_ARG]


FAKELAB = fakelab_command()


async def stored_lab(settings: Settings, lab_id: str) -> Lab:
    """The lab as the database holds it (with the driver's handle)."""
    engine = create_engine(settings.resolved_database_url)
    try:
        lab = await Store(engine).get_lab(lab_id)
    finally:
        await engine.dispose()
    assert lab is not None, f"lab {lab_id} is not in the database"
    return lab


async def lab_process(settings: Settings, lab_id: str) -> tuple[int, int | None]:
    """The (pid, start time) the local driver recorded for a lab."""
    handle = (await stored_lab(settings, lab_id)).handle
    assert handle.get("pid"), f"lab {lab_id} has no process in its handle: {handle}"
    return int(handle["pid"]), handle.get("started")


def alive(process: tuple[int, int | None]) -> bool:
    return procs.is_alive(*process)


def fakelab_processes() -> list[int]:
    """Pids of every live fakelab process of this test session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if SESSION_ARG in cmd and procs.start_time(int(entry.name)) is not None:
                found.append(int(entry.name))
    return found


def assert_error(resp: httpx.Response, status: int, *words: str, field: str | None = None) -> str:
    """An error answer: the status, ``{"detail": "<one sentence>"}``, naming ``words``;
    a refused option (422) has its key in ``field`` apart from the sentence."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    if field is not None or "field" in body:
        assert list(body) == ["detail", "field"] and status == 422, body
        assert field is None or body["field"] == field, body
        assert "options." not in body["detail"], body
    else:
        assert list(body) == ["detail"], body
    detail = body["detail"]
    assert isinstance(detail, str)
    assert detail.endswith("."), detail
    assert "\n" not in detail, detail
    assert not re.search(r"[.!?]\s+[A-Z]", detail), f"more than one sentence: {detail}"
    assert "Traceback" not in detail, detail
    for word in words:
        assert word in detail, f"{word!r} not in {detail!r}"
    return detail


def sse_events(lines: list[str]) -> list[dict[str, Any]]:
    """The ``lab`` events of a server-sent event stream, with their ids."""
    out: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    for line in [*lines, ""]:
        if line == "":
            if fields.get("event") == "lab":
                event = json.loads(fields["data"])
                event["_id"] = fields.get("id")
                out.append(event)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return out


def spawn_fakelab(
    log_path: Path, prefix: str, mode: str = "serve"
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a fakelab as the local driver would, and the handle the driver would store.

    For tests that put a lab into the database by hand. The caller reaps the
    returned ``subprocess.Popen`` (after the backend has stopped the lab).
    """
    port = procs.free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FAKELAB_MODE": mode,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}{prefix}",
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            FAKELAB,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = {
        "pid": proc.pid,
        "started": procs.start_time(proc.pid),
        "port": port,
        "prefix": prefix,
        "log": str(log_path),
    }
    return proc, handle


def process_environment(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def jupyterlab_processes(user: str) -> dict[int, dict[str, str]]:
    """The JupyterLab processes (``jupyterhub-singleuser``) of ``user``'s labs on this
    machine, with their environments."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (
                entry.name.isdigit()
                and b"jupyterhub-singleuser" in (entry / "cmdline").read_bytes()
            ):
                env = process_environment(int(entry.name))
                if env.get("JUPYTERHUB_USER") == user:
                    found[int(entry.name)] = env
    return found


def kill_fakelabs() -> None:
    """Kill what a failed test left behind, so that it does not fail the next tests too."""
    for pid in fakelab_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
