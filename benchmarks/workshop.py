"""Workshop burst: N people join a workshop, then all press Start within a moment.

    make bench-workshop ARGS="--participants 100"

Runs a `lablink up` stack on free ports with a site of its own: one system,
``local``, whose labs are light processes (tests/fakelab.py: an HTTP server
that answers the readiness probe at once), so that what is measured is
Lablink — hub, spawner, backend, proxy — and not JupyterLab's own start;
``demo`` is the site's one workshop instructor.

The run:

1. the stack comes up; ``demo`` (the organizer) logs in and creates the
   workshop through the hub's API (``POST /hub/api/lablink/workshops``: system
   ``local``, room for N, open now), then starts and stops its own lab in it a
   few times (``--lone``; the first is an uncounted warm-up): the lone start to
   compare the burst with;
2. the N participants log in (``p001`` ...) and join with the invitation's code,
   all at once (``POST /hub/api/lablink/workshops/<id>/join``);
3. the burst: every participant presses Start at once (``asyncio.gather``;
   ``--spread S`` spreads the presses over S seconds):
   ``POST /hub/api/users/<name>/servers/<id>`` with ``{"workshop": "<id>"}``,
   then reads the hub's progress stream as the spawn page does; the lab is
   running when ``/user/<name>/<id>/lab`` answers 200 through the proxy;
4. the organizer presses "Stop all" (``POST …/workshops/<id>/stop``) and the
   run waits until every participant's server is gone;
5. the report: failures (each with its sentence), seconds until all labs are
   running, p50/p99 of the hub's answer to the start POST and of each person's
   press-to-running time, p50/p99 of the backend's answer to a start as the
   hub sees it (the spawner's "lab <id> accepted in <ms> ms" lines in
   hub.log), the joins, and the CPU seconds each process spent in the burst.

``--plain`` starts default servers (``POST /hub/api/users/<name>/server``) in a
site VO with room for everybody instead: the burst without workshops.

The last line is machine-readable: ``participants=… failures=… all_running_s=…
hub_post_p50_ms=… hub_post_p99_ms=… backend_start_p50_ms=… backend_start_p99_ms=…
backend_own_p99_ms=… ready_p50_s=… lone_ready_s=…``. The exit code is 1 when a start failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.procs import start_time  # noqa: E402
from tests.helpers import site  # noqa: E402
from tests.helpers.hub import HubUser  # noqa: E402
from tests.helpers.labs import SESSION_ARG, fakelab_processes  # noqa: E402
from tests.helpers.stack import Stack  # noqa: E402

ORGANIZER = "demo"
VO = "everybody"  # the site VO of --plain
WORKSHOP = "burst-bench"
# the spawner's line once the backend has accepted a start (spawner/spawner.py)
ACCEPTED = re.compile(r": lab ([0-9a-f-]{36}) accepted in (\d+) ms")
# the backend's line once it has stored a lab (backend/labs.py): its own time for the start
OWN_TIME = re.compile(r" lab ([0-9a-f]{8}): accepted on system \S+ in (\d+) ms")
# JupyterHub's request log: "201 POST /hub/api/users/p001/server (p001@127.0.0.1) 812.34ms"
HUB_REQUEST = re.compile(
    r"\b(\d{3}) (POST|GET|DELETE) (/hub/api/users/[^/\s]+/servers?/?[^\s]*) \([^)]*\) ([\d.]+)ms"
)


# -- figures (pure; tests/test_bench_workshop.py) ------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest
    ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def accepted_ms(log_text: str, lab_ids: Iterable[str] | None = None) -> dict[str, float]:
    """Milliseconds of the backend's answer to each start, by lab id, from hub.log
    (only ``lab_ids`` when given)."""
    wanted = set(lab_ids) if lab_ids is not None else None
    found = {}
    for match in ACCEPTED.finditer(log_text):
        if wanted is None or match.group(1) in wanted:
            found[match.group(1)] = float(match.group(2))
    return found


def backend_own_ms(log_text: str) -> list[float]:
    """Milliseconds the backend itself took for each start (backend.log)."""
    return [float(m.group(2)) for m in OWN_TIME.finditer(log_text)]


def hub_requests(log_text: str, method: str, suffix: str) -> list[tuple[int, str, float]]:
    """(status, path, milliseconds) of the hub's logged API requests of ``method``
    whose path ends with ``suffix``."""
    return [
        (int(m.group(1)), m.group(3), float(m.group(4)))
        for m in HUB_REQUEST.finditer(log_text)
        if m.group(2) == method and m.group(3).endswith(suffix)
    ]


def spread(values: Sequence[float], unit: str = "s", scale: float = 1.0) -> str:
    """'p50 x, p90 y, p99 z, max w' for a report line."""
    if not values:
        return "(none)"
    parts = [f"p{q} {percentile(values, q) * scale:.3f}" for q in (50, 90, 99)]
    return ", ".join(parts) + f", max {max(values) * scale:.3f} {unit}"


# -- processes ---------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stack_processes(stack: Stack) -> dict[str, list[int]]:
    """The stack's processes by role: hub, backend, proxy, labs."""
    roles: dict[str, list[int]] = {"hub": [], "backend": [], "proxy": [], "labs": []}
    for pid, cmd in stack.processes():
        if SESSION_ARG in cmd:
            roles["labs"].append(pid)
        elif "-m jupyterhub -f" in cmd:
            roles["hub"].append(pid)
        elif "backend.cli backend" in cmd:
            roles["backend"].append(pid)
        elif "configurable-http-proxy" in cmd:
            roles["proxy"].append(pid)
    roles["labs"] = sorted(set(roles["labs"]) | set(fakelab_processes()))
    return roles


@dataclass
class CpuMeter:
    """CPU seconds per role between ``begin`` and ``end`` (labs born in between count
    from zero)."""

    stack: Stack
    before: dict[int, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    _t0: float = 0.0

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self.before = {pid: cpu_seconds(pid) for pids in stack_processes(self.stack).values()
                       for pid in pids}  # fmt: skip

    def end(self) -> None:
        self.wall = time.monotonic() - self._t0
        for role, pids in stack_processes(self.stack).items():
            self.used[role] = sum(cpu_seconds(p) - self.before.get(p, 0.0) for p in pids)
        self.used["bench"] = sum(os.times()[:2]) - self.before.get(-1, 0.0)

    def begin_bench(self) -> None:
        self.before[-1] = sum(os.times()[:2])


# -- the site ----------------------------------------------------------------------


def site_document(state: Path, participants: int) -> dict[str, Any]:
    """The bench's site: the demo login, one local system of light labs, ``demo`` as
    the workshop instructor allowed a workshop of everybody, and (for --plain) one
    site VO everybody is in with a place for each participant and the organizer."""
    tokens = [
        {"name": "hub", "secret_env": "LABLINK_HUB_TOKEN", "role": "hub"},
        {"name": "admin", "secret_env": "LABLINK_ADMIN_TOKEN", "role": "admin"},
    ]
    system = site.local_system(display_name="Light labs", args=[], start_timeout=120)
    vos = {
        VO: {
            "display_name": "Everybody",
            "description": "every participant of the burst, one lab each",
            "members": {"users": ["*"]},
            "quota": {"labs": participants + 1, "labs_per_user": 1},
        }
    }
    workshops = {
        "instructors": {"users": [ORGANIZER]},
        "grace": 5,
        "limits": {"participants": max(participants, 100), "days": 1},
    }
    document = site.doc(
        state, systems={"local": system}, tokens=tokens, vos=vos, workshops=workshops
    )
    document["site_name"] = "Lablink workshop bench"
    return document


async def create_workshop(organizer: HubUser, participants: int) -> dict[str, Any]:
    """The organizer's workshop, open from now for two hours, through the hub's API."""
    now = datetime.now(UTC).replace(microsecond=0)
    body = {
        "id": WORKSHOP,
        "title": "Burst bench",
        "description": "everybody presses Start at once",
        "start": (now - timedelta(minutes=1)).isoformat(),
        "end": (now + timedelta(hours=2)).isoformat(),
        "system": "local",
        "options": {},
        "max_participants": participants,
    }
    resp = await organizer.http.post(
        "/hub/api/lablink/workshops", json=body, headers={"X-XSRFToken": organizer.xsrf}
    )
    if resp.status_code != 201:
        raise RuntimeError(f"creating the workshop answered {resp.status_code}: {resp.text}")
    return resp.json()  # type: ignore[no-any-return]


async def join(person: HubUser, code: str) -> tuple[float, str]:
    """Join the workshop with its code: (seconds, the refusal's sentence or '')."""
    t0 = time.monotonic()
    resp = await person.http.post(
        f"/hub/api/lablink/workshops/{WORKSHOP}/join",
        json={"code": code},
        headers={"X-XSRFToken": person.xsrf},
    )
    took = time.monotonic() - t0
    if resp.status_code != 200:
        return took, f"join answered {resp.status_code}: {sentence_of(resp)}"
    return took, ""


# -- one person's start ------------------------------------------------------------


@dataclass
class Start:
    user: str
    pressed_s: float = 0.0  # when they pressed Start, from the burst's beginning
    post_s: float = math.nan  # until the hub answered the POST
    status: int = 0  # of the POST (201: running already, 202: pending)
    ready_s: float = math.nan  # press → the lab answered 200 through the proxy
    failure: str = ""  # the sentence, if it failed

    @property
    def ok(self) -> bool:
        return not self.failure and not math.isnan(self.ready_s)


def sentence_of(resp: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        body = resp.json()
        return str(body.get("message") or body.get("detail") or body)
    return resp.text[:300]


async def start_one(
    person: HubUser,
    t0: float,
    delay: float,
    timeout: float,
    server: str = "",
    options: dict[str, Any] | None = None,
) -> Start:
    """Press Start after ``delay`` seconds, follow the progress stream as the spawn page
    does, then wait until the lab answers through the proxy."""
    await asyncio.sleep(max(0.0, t0 + delay - time.monotonic()))
    result = Start(person.name)
    pressed = time.monotonic()
    result.pressed_s = pressed - t0
    try:
        resp = await person.start(server, options)
        result.post_s = time.monotonic() - pressed
        result.status = resp.status_code
        if resp.status_code not in (201, 202):
            result.failure = f"start answered {resp.status_code}: {sentence_of(resp)}"
            return result
        events = await person.progress(server, timeout=timeout)
        last = events[-1] if events else {}
        if last.get("failed"):
            result.failure = f"the spawn failed: {last.get('message', '')}"
            return result
        left = max(1.0, timeout - (time.monotonic() - pressed))
        await person.wait_lab(server, timeout=left, poll=0.1)
        result.ready_s = time.monotonic() - pressed
    except (httpx.HTTPError, AssertionError) as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
    return result


async def stop_all(people: Sequence[HubUser], server: str = "", asked: bool = True) -> list[str]:
    """Stop everybody's server (``asked``: each person asks; else somebody else did)
    and wait until the hub has them all stopped; the problems (none wanted)."""

    async def one(person: HubUser) -> str:
        if asked:
            resp = await person.stop(server)
            if resp.status_code not in (202, 204, 404):
                return f"{person.name}: stop answered {resp.status_code}: {sentence_of(resp)}"
        try:
            await person.wait_stopped(server, timeout=120)
        except AssertionError as exc:
            return f"{person.name}: {exc}"
        return ""

    return [p for p in await asyncio.gather(*(one(p) for p in people)) if p]


# -- the run -----------------------------------------------------------------------


@dataclass
class Result:
    participants: int
    lone: list[Start]
    burst: list[Start]
    all_running_s: float
    login_s: float
    join_s: list[float]
    backend_ms: dict[str, float]
    backend_own_ms: list[float]
    lone_backend_ms: dict[str, float]
    hub_post_ms: list[float]
    cpu: dict[str, float]
    wall_s: float
    stop_all_s: float


async def bounded(coros: Iterable[Any], at_once: int) -> list[Any]:
    gate = asyncio.Semaphore(at_once)

    async def run(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def hub_log(stack: Stack) -> str:
    return (stack.state_dir / "logs" / "hub.log").read_text(errors="replace")


def backend_log(stack: Stack) -> str:
    return (stack.state_dir / "logs" / "backend.log").read_text(errors="replace")


def lab_ids_since(stack: Stack, offset: int) -> list[str]:
    return [m.group(1) for m in ACCEPTED.finditer(hub_log(stack)[offset:])]


async def run_bench(stack: Stack, password: str, args: argparse.Namespace) -> Result:
    names = [f"p{i:03d}" for i in range(1, args.participants + 1)]
    server, options = ("", None) if args.plain else (WORKSHOP, {"workshop": WORKSHOP})
    async with contextlib.AsyncExitStack() as exits:
        organizer = await exits.enter_async_context(HubUser(stack.url, ORGANIZER, password))
        await organizer.login()
        code = ""
        if not args.plain:
            code = str((await create_workshop(organizer, args.participants))["code"])
            print(f"workshop {WORKSHOP} created for {args.participants} participants", flush=True)

        lone: list[Start] = []
        lone_ids: list[str] = []
        for i in range(args.lone + 1):  # the first one warms up, uncounted
            offset = len(hub_log(stack))
            run = await start_one(organizer, time.monotonic(), 0.0, args.timeout, server, options)
            if run.failure:
                raise RuntimeError(f"the lone start failed: {run.failure}")
            if i:
                lone.append(run)
                lone_ids += lab_ids_since(stack, offset)
            problems = await stop_all([organizer], server)
            if problems:
                raise RuntimeError("; ".join(problems))
        print(
            f"lone start ({args.lone} runs after a warm-up): {spread([r.ready_s for r in lone])}",
            flush=True,
        )

        people = [
            await exits.enter_async_context(HubUser(stack.url, name, password)) for name in names
        ]
        t_login = time.monotonic()
        await bounded((p.login() for p in people), 20)
        login_s = time.monotonic() - t_login
        print(f"{len(people)} participants logged in in {login_s:.1f} s", flush=True)
        joins: list[tuple[float, str]] = []
        if not args.plain:
            joins = list(await asyncio.gather(*(join(p, code) for p in people)))
            refused = [f"{p.name}: {why}" for p, (_, why) in zip(people, joins, strict=True) if why]
            print(
                f"{len(people) - len(refused)} joined at once: {spread([t for t, _ in joins])}",
                flush=True,
            )
            if refused:
                raise RuntimeError("joins refused: " + "; ".join(refused[:5]))

        offset = len(hub_log(stack))
        backend_offset = len(backend_log(stack))
        spies = []
        if args.profile:
            for role, pid in (("hub", stack.hub_pid()), ("backend", stack.backend_pid())):
                spies.append(profile(pid, Path(f"{args.profile}.{role}")))
        meter = CpuMeter(stack)
        meter.begin()
        meter.begin_bench()
        t0 = time.monotonic() + 0.2
        delays = [random.uniform(0, args.spread) if args.spread else 0.0 for _ in people]
        burst = await asyncio.gather(
            *(
                start_one(p, t0, d, args.timeout, server, options)
                for p, d in zip(people, delays, strict=True)
            )
        )
        meter.end()
        for spy in spies:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        done = [r.pressed_s + r.ready_s for r in burst if r.ok]
        all_running = max(done) if len(done) == len(burst) else math.nan
        text = hub_log(stack)[offset:]
        backend = accepted_ms(text)
        own = backend_own_ms(backend_log(stack)[backend_offset:])
        suffix = f"/servers/{server}" if server else "/server"
        hub_post = [ms for status, path, ms in hub_requests(text, "POST", suffix)]

        running = [p for p, r in zip(people, burst, strict=True) if r.ok]
        t_stop = time.monotonic()
        if args.plain:
            problems = await stop_all(running, server)
        else:  # the organizer's "Stop all"
            resp = await organizer.http.post(
                f"/hub/api/lablink/workshops/{WORKSHOP}/stop",
                headers={"X-XSRFToken": organizer.xsrf},
            )
            problems = [] if resp.status_code == 200 else [f"stop all: {sentence_of(resp)}"]
            problems += await stop_all(running, server, asked=False)
        stop_s = time.monotonic() - t_stop
        for problem in problems:
            print(f"stop: {problem}", file=sys.stderr)
    return Result(
        participants=len(names),
        lone=lone,
        burst=list(burst),
        all_running_s=all_running,
        login_s=login_s,
        join_s=[t for t, _ in joins],
        backend_ms=backend,
        backend_own_ms=own,
        lone_backend_ms=accepted_ms(hub_log(stack), lone_ids),
        hub_post_ms=hub_post,
        cpu=meter.used,
        wall_s=meter.wall,
        stop_all_s=stop_s,
    )


# -- the report --------------------------------------------------------------------


def summary(result: Result) -> dict[str, float | int]:
    ok = [r for r in result.burst if r.ok]
    backend = list(result.backend_ms.values())
    lone = [r.ready_s for r in result.lone]
    return {
        "participants": result.participants,
        "failures": result.participants - len(ok),
        "all_running_s": round(result.all_running_s, 3),
        "hub_post_p50_ms": round(percentile([r.post_s for r in ok], 50) * 1000, 1),
        "hub_post_p99_ms": round(percentile([r.post_s for r in ok], 99) * 1000, 1),
        "backend_start_p50_ms": round(percentile(backend, 50), 1),
        "backend_start_p99_ms": round(percentile(backend, 99), 1),
        "backend_own_p99_ms": round(percentile(result.backend_own_ms, 99), 1),
        "ready_p50_s": round(percentile([r.ready_s for r in ok], 50), 3),
        "lone_ready_s": round(statistics.median(lone), 3) if lone else math.nan,
    }


def report(result: Result, args: argparse.Namespace) -> dict[str, float | int]:
    burst = result.burst
    ok = [r for r in burst if r.ok]
    failed = [r for r in burst if not r.ok]
    print()
    print(
        f"burst of {result.participants} {'plain' if args.plain else 'workshop'} starts "
        f"(presses spread over {args.spread:g} s), "
        f"{os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}"
    )
    print(f"  failures: {len(failed)}")
    for r in failed[:20]:
        print(f"    {r.user}: {r.failure}")
    statuses: dict[int, int] = {}
    for r in burst:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    print(f"  start POST answers: {dict(sorted(statuses.items()))}")
    print(f"  all running after: {result.all_running_s:.3f} s (first press to last lab answering)")
    print(f"  hub's answer to the start POST (as the person sees it): "
          f"{spread([r.post_s for r in ok], 'ms', 1000)}")  # fmt: skip
    if result.hub_post_ms:
        print(f"  ... as the hub logs it: {spread(result.hub_post_ms, 'ms')}")
    print(f"  backend's answer to a start (as the hub sees it): "
          f"{spread(list(result.backend_ms.values()), 'ms')}")  # fmt: skip
    print(f"  ... the backend's own time for it (backend.log): "
          f"{spread(result.backend_own_ms, 'ms')}")  # fmt: skip
    print(f"  press → lab answering through the proxy: {spread([r.ready_s for r in ok])}")
    lone = [r.ready_s for r in result.lone]
    if lone:
        med = statistics.median(lone)
        burst_med = percentile([r.ready_s for r in ok], 50)
        lone_backend = list(result.lone_backend_ms.values())
        print(
            f"  lone start, median of {len(lone)}: {med:.3f} s (backend's answer "
            f"{percentile(lone_backend, 50):.0f} ms); the burst's median is "
            f"{burst_med / med:.1f} times that"
        )
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in result.cpu.items())
    print(f"  CPU seconds during the burst ({result.wall_s:.1f} s wall): {cpu}")
    how = "each person's stop" if args.plain else "the organizer's Stop all"
    print(f"  stopping all {len(ok)} labs ({how}) until the hub has them stopped: "
          f"{result.stop_all_s:.1f} s")  # fmt: skip
    numbers = summary(result)
    if args.json:
        raw = {
            "summary": numbers,
            "spread_s": args.spread,
            "lone": [asdict(r) for r in result.lone],
            "burst": [asdict(r) for r in burst],
            "backend_ms": result.backend_ms,
            "backend_own_ms": result.backend_own_ms,
            "hub_post_ms": result.hub_post_ms,
            "cpu_s": result.cpu,
            "wall_s": result.wall_s,
            "login_s": result.login_s,
            "join_s": result.join_s,
            "mode": "plain" if args.plain else "workshop",
            "stop_all_s": result.stop_all_s,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "python": platform.python_version(),
            },
        }
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")
    print(" ".join(f"{k}={v}" for k, v in numbers.items()))
    return numbers


# -- main --------------------------------------------------------------------------


def profile(pid: int | None, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy's samples of one process (raw, for flame graphs) until it gets SIGINT."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists() or pid is None:
        print(f"no py-spy (pip install py-spy) or no process: not writing {out}", file=sys.stderr)
        return None
    argv = [str(spy), "record", "-p", str(pid), "-f", "raw", "-r", "100", "--nonblocking",
            "-o", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=100, help="people in the burst (100)")
    parser.add_argument(
        "--spread", type=float, default=0.0, help="seconds over which they press Start (0)"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="default servers in a site VO instead of a workshop's one-click start",
    )
    parser.add_argument("--lone", type=int, default=3, help="lone starts to compare with (3)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per start (300)")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the backend's database (an empty one; default: SQLite in the state directory)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the raw numbers to FILE")
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy's samples of the hub and the backend during the burst (PREFIX.hub, "
        "PREFIX.backend; raw, for flame graphs)",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the stack's state and logs in DIR")
    args = parser.parse_args(argv)
    if args.participants < 1 or args.lone < 0 or args.spread < 0:
        parser.error("--participants must be at least 1, --lone and --spread not negative")

    password = secrets.token_urlsafe(18)
    tmp = tempfile.TemporaryDirectory(prefix="lablink-bench-workshop-")
    root = Path(args.keep).resolve() if args.keep else Path(tmp.name)
    state = root / "state"
    site_file = site.write(site_document(state, args.participants), root / "site.yaml")
    extra = {"LABLINK_DATABASE_URL": args.database_url} if args.database_url else {}
    stack = Stack(state, password, [ORGANIZER], site=site_file, extra_env=extra)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 1
    try:
        stack.start()
        print(f"stack up at {stack.url} (state {state})", flush=True)
        result = asyncio.run(run_bench(stack, password, args))
        numbers = report(result, args)
        code = 0 if numbers["failures"] == 0 else 1
    except KeyboardInterrupt:
        print("interrupted; stopping the stack", file=sys.stderr)
        code = 130
    except (RuntimeError, httpx.HTTPError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
    finally:
        stopped = stack.stop(timeout=180)
        if stopped != 0:
            print(f"lablink up exited with {stopped}; its log: {stack.log}", file=sys.stderr)
        left = [pid for pid in fakelab_processes() if start_time(pid) is not None]
        if left:
            print(f"labs left behind: {left}; ending them", file=sys.stderr)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if args.keep:
            print(f"kept {root}")
        else:
            tmp.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
