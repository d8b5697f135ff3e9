"""Spawn benchmark: Lablink (`lablink up`, system `local`) against JupyterHub's stock spawner.

Both hubs run side by side on this machine, with the same authenticator
(`lablink-demo`), the same proxy (configurable-http-proxy) and the same lab
command (jupyterhub-singleuser):

(a) lablink: a `lablink up` stack (backend + JupyterHub with LablinkSpawner + proxy);
(b) stock:   a plain `jupyterhub` with `SimpleLocalProcessSpawner` (LocalProcessSpawner
             without the setuid to a system user).

One run is: a logged-in user asks for their server (POST /hub/api/users/<u>/server)
and the clock runs until /user/<u>/lab answers 200 through the proxy (polled every
50 ms, following the OAuth redirects as a browser does); then the server is stopped
and the benchmark waits until its process is gone. After one uncounted warm-up run
per hub, the runs alternate (lablink, stock, lablink, stock, ...) so that drift of
the machine hits both sides alike.

    .venv/bin/python benchmarks/spawn.py [--runs N] [--json FILE] [--keep]

The last line of the output is
``lablink_median_s=<x> stock_median_s=<y> ratio=<x/y>``. The exit code is non-zero
if a hub does not come up or a spawn fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend import procs  # noqa: E402
from backend.embedded import become_subreaper  # noqa: E402
from backend.procs import free_ports  # noqa: E402
from tests.helpers.hub import HubUser  # noqa: E402

PASSWORD = "bench-password-0123456789"
USERS = ["alice", "bob", "carol"]
LAB_PROCESS = "jupyterhub-singleuser"
POLL_SECONDS = 0.05
# variables of our own environment that must not leak into the hubs
DROPPED_PREFIXES = ("JUPYTERHUB_", "LABLINK_", "CONFIGPROXY_", "JPY_")


class BenchError(Exception):
    """A hub did not come up, or a spawn or a stop failed."""


# -- processes ------------------------------------------------------------------


def live(pid: int) -> bool:
    return procs.is_alive(pid, None)


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (from /proc)."""
    return [pid for pid, _started in procs.descendants(root)]


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def lab_processes(under: Path) -> list[int]:
    """Live jupyterhub-singleuser processes working in a directory below ``under``."""
    found = []
    prefix = str(under)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not live(int(entry.name)):
            continue
        if LAB_PROCESS not in cmdline(int(entry.name)):
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd").startswith(prefix):
                found.append(int(entry.name))
    return found


def reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def tail(path: Path, lines: int = 30) -> str:
    return procs.tail(path, lines) or f"({path} is empty or cannot be read)"


@dataclass
class Hub:
    """One hub under test, run as a child process in its own session."""

    label: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    labs_dir: Path  # the labs' working directories are below it
    port: int
    logs: list[Path] = field(default_factory=list)  # worth showing when something fails
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops us
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tails(self) -> str:
        return "\n".join(f"--- {p} (end)\n{tail(p)}" for p in [self.log, *self.logs])

    async def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise BenchError(f"{self.label}: the hub exited early\n{self.log_tails()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/hub/api/")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise BenchError(
            f"{self.label}: the hub did not answer in {timeout:g} s\n{self.log_tails()}"
        )

    def terminate(self) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_ended(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.label}: no exit {timeout:g} s after SIGTERM; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


def proxy_command() -> str:
    given = os.environ.get("LABLINK_PROXY_COMMAND")
    if given:
        return given
    installed = Path(sys.prefix) / "proxy" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(installed) if installed.exists() else "configurable-http-proxy"


def lab_command() -> str:
    beside = Path(sys.executable).parent / LAB_PROCESS
    return str(beside) if beside.exists() else (shutil.which(LAB_PROCESS) or LAB_PROCESS)


def base_env(proxy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
    env["LABLINK_DEMO_PASSWORD"] = PASSWORD
    env["LABLINK_DEMO_USERS"] = ",".join(USERS)
    env["LABLINK_PROXY_COMMAND"] = proxy
    return env


def lablink_hub(root: Path, proxy: str, log_level: str) -> Hub:
    state = root / "state"
    names = ("hub", "backend", "hub_api", "proxy_api", "devsite")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    argv = [
        sys.executable, "-m", "backend.cli", "up",
        "--state-dir", str(state),
        "--port", str(ports["hub"]),
        "--backend-port", str(ports["backend"]),
        "--hub-api-port", str(ports["hub_api"]),
        "--proxy-api-port", str(ports["proxy_api"]),
        "--devsite-port", str(ports["devsite"]),
        "--log-level", log_level,
    ]  # fmt: skip
    return Hub(
        label="lablink",
        argv=argv,
        env=base_env(proxy),
        cwd=REPO,
        log=root / "lablink-up.log",
        labs_dir=state / "users",
        port=ports["hub"],
        logs=[state / "logs" / "hub.log", state / "logs" / "backend.log"],
    )


STOCK_CONFIG = """\
# generated by benchmarks/spawn.py: JupyterHub's stock local spawner
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_api_port}"
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{root}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = "{root}/jupyterhub-proxy.pid"
c.JupyterHub.authenticator_class = "lablink-demo"
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
c.Spawner.cmd = [{cmd!r}]
c.Spawner.args = {args!r}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60
"""


def stock_hub(root: Path, proxy: str, log_level: str) -> Hub:
    root.mkdir(parents=True, exist_ok=True)
    port, hub_api_port, proxy_api_port = free_ports(3)
    config = root / "jupyterhub_config.py"
    config.write_text(
        STOCK_CONFIG.format(
            port=port,
            hub_api_port=hub_api_port,
            proxy_api_port=proxy_api_port,
            root=root,
            proxy=proxy,
            cmd=lab_command(),
            args=["--allow-root"] if os.geteuid() == 0 else [],
        )
    )
    level = f"--log-level={log_level.upper()}"
    argv = [sys.executable, "-m", "jupyterhub", "-f", str(config), level]
    return Hub(
        label="stock",
        argv=argv,
        env=base_env(proxy),
        cwd=root,
        log=root / "jupyterhub.log",
        labs_dir=root / "home",
        port=port,
    )


# -- measuring ------------------------------------------------------------------


@dataclass
class Run:
    hub: str
    user: str
    total_s: float  # start request until /lab answered 200
    post_s: float  # until the start request was answered
    stop_s: float  # stop request until the lab process was gone
    status: int  # of the start request (201: ready, 202: still pending)


async def one_run(hub: Hub, user: HubUser, timeout: float) -> Run:
    if lab_processes(hub.labs_dir):
        raise BenchError(f"{hub.label}: a lab process is still there before the start")
    t0 = time.monotonic()
    resp = await user.start()
    post = time.monotonic() - t0
    if resp.status_code not in (201, 202):
        raise BenchError(
            f"{hub.label}: start of {user.name}'s server failed: {resp.status_code} "
            f"{resp.text[:500]}\n{hub.log_tails()}"
        )
    try:
        await user.wait_lab(timeout=timeout, poll=POLL_SECONDS)
    except AssertionError as exc:
        raise BenchError(f"{hub.label}: {exc}\n{hub.log_tails()}") from None
    total = time.monotonic() - t0

    t1 = time.monotonic()
    stopped = await user.stop()
    if stopped.status_code not in (202, 204):
        raise BenchError(
            f"{hub.label}: stop of {user.name}'s server failed: {stopped.status_code} "
            f"{stopped.text[:500]}"
        )
    await user.wait_stopped(timeout=timeout)
    while lab_processes(hub.labs_dir):
        if time.monotonic() - t1 > timeout:
            raise BenchError(f"{hub.label}: the lab process of {user.name} did not end")
        await asyncio.sleep(0.05)
    return Run(hub.label, user.name, total, post, time.monotonic() - t1, resp.status_code)


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def user_of(i: int, per_user: int) -> str:
    return USERS[(i // per_user) % len(USERS)]


async def bench(hubs: list[Hub], args: argparse.Namespace) -> dict[str, Any]:
    await asyncio.gather(*(h.wait_up(args.up_timeout) for h in hubs))
    people: dict[tuple[str, str], HubUser] = {}
    async with contextlib.AsyncExitStack() as stack:
        for hub in hubs:
            for name in USERS:
                person = await stack.enter_async_context(HubUser(hub.url, name, PASSWORD))
                await person.login()
                people[hub.label, name] = person
        print(
            f"hubs up: {', '.join(f'{h.label} {h.url}' for h in hubs)}; "
            f"warm-up, then {args.runs} runs each",
            flush=True,
        )
        warmup: dict[str, float] = {}
        for hub in hubs:
            run = await one_run(hub, people[hub.label, USERS[0]], args.timeout)
            warmup[hub.label] = run.total_s
            print(f"  warm-up {hub.label:8} {run.total_s:7.3f} s", flush=True)
        runs: dict[str, list[Run]] = {h.label: [] for h in hubs}
        for i in range(args.runs):
            name = user_of(i, args.per_user)
            for hub in hubs:  # alternate: lablink, stock, lablink, stock, ...
                run = await one_run(hub, people[hub.label, name], args.timeout)
                runs[hub.label].append(run)
                print(
                    f"  run {i + 1:3} {hub.label:8} {name:6} {run.total_s:7.3f} s "
                    f"(start request answered {run.status} after {run.post_s:.3f} s, "
                    f"stop {run.stop_s:.3f} s)",
                    flush=True,
                )
    return {"warmup_s": warmup, "runs": runs}


def report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[Run]] = result["runs"]
    a, b = runs["lablink"], runs["stock"]
    print()
    head = ("run", "user", "lablink_s", "(post_s)", "stock_s", "(post_s)")
    print("{:>4} {:6} {:>10} {:>9} {:>10} {:>9}".format(*head))
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        print(
            f"{i + 1:>4} {ra.user:6} {ra.total_s:>10.3f} {ra.post_s:>9.3f} "
            f"{rb.total_s:>10.3f} {rb.post_s:>9.3f}"
        )
    ta, tb = [r.total_s for r in a], [r.total_s for r in b]
    pa, pb = [r.post_s for r in a], [r.post_s for r in b]
    for what, fn in (("median", statistics.median), ("p90", p90)):
        print(f"{what:<11} {fn(ta):>10.3f} {fn(pa):>9.3f} {fn(tb):>10.3f} {fn(pb):>9.3f}")
    print(
        "(seconds from POST /hub/api/users/<u>/server to /user/<u>/lab answering 200 through "
        "the proxy; post_s: until the POST was answered; p90 interpolated)"
    )
    ma, mb = statistics.median(ta), statistics.median(tb)
    summary = {
        "lablink_median_s": round(ma, 3),
        "stock_median_s": round(mb, 3),
        "ratio": round(ma / mb, 3),
    }
    if args.json:
        raw = {
            "runs_per_side": args.runs,
            "users": USERS,
            "per_user": args.per_user,
            "warmup_s": result["warmup_s"],
            "lablink": [r.__dict__ for r in a],
            "stock": [r.__dict__ for r in b],
            "lablink_p90_s": round(p90(ta), 3),
            "stock_p90_s": round(p90(tb), 3),
            **summary,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "python": platform.python_version(),
                "jupyterhub": _version("jupyterhub"),
                "jupyterlab": _version("jupyterlab"),
            },
        }
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")
    print(" ".join(f"{k}={v:.3f}" for k, v in summary.items()))
    return summary


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# -- cleaning up ----------------------------------------------------------------


def cleanup(hubs: list[Hub], root: Path, keep: bool) -> list[str]:
    """Stop both hubs (SIGTERM, then wait), then end whatever is left below us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave processes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    problems = []
    family = {pid: cmdline(pid) for pid in descendants(os.getpid())}
    for hub in hubs:
        hub.terminate()
    for hub in hubs:
        hub.wait_ended(120)
    time.sleep(0.2)
    left = [pid for pid in descendants(os.getpid()) if live(pid)]
    left += [p for p in lab_processes(root) if p not in left]
    left += [p for p, cmd in family.items() if live(p) and cmdline(p) == cmd and p not in left]
    if left:
        problems.append(
            "left behind by the hubs (now ended): "
            + "; ".join(f"{p} {cmdline(p)[:100]}" for p in left)
        )
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(0.5)
    reap()
    if lab_processes(root):
        problems.append(f"{LAB_PROCESS} processes still alive: {lab_processes(root)}")
    if keep:
        print(f"kept {root} (logs: lablink-up.log, state/logs/, stock/jupyterhub.log)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return problems


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs per side (10)")
    parser.add_argument("--json", metavar="FILE", help="write the raw numbers to FILE")
    parser.add_argument(
        "--per-user", type=int, default=4, help="runs in a row by the same user (4)"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds per spawn (120)")
    parser.add_argument("--up-timeout", type=float, default=120, help="seconds for the hubs")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs) at the end"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.per_user < 1:
        parser.error("--runs and --per-user must be at least 1")

    signal.signal(signal.SIGTERM, _sigterm)
    become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="lablink-bench-spawn-"))
    proxy = proxy_command()
    hubs = [
        lablink_hub(root, proxy, args.log_level),
        stock_hub(root / "stock", proxy, args.log_level),
    ]
    code = 1
    try:
        for hub in hubs:
            hub.start()
        result = asyncio.run(bench(hubs, args))
        report(result, args)
        code = 0
    except (BenchError, AssertionError, httpx.HTTPError) as exc:
        print(f"benchmark failed: {exc!s}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        code = 130
    finally:
        problems = cleanup(hubs, root, args.keep)
        for problem in problems:
            print(f"cleanup: {problem}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
