"""Tunnel benchmark: a compute node's lab reached directly, through OpenSSH, and
through Lablink's tunnel service.

    make bench-tunnel ARGS="--size-mib 64 --requests 200"

The benchmark starts its own OpenSSH sshd on 127.0.0.1 (tests/helpers/sshd.py, the
test suite's peer: the "login node") and its own HTTP server (the "lab on a
compute node"). Each *path* sets up a local endpoint that reaches that server:

  direct              the HTTP server itself, no tunnel
  openssh             ``ssh -N -L`` with OpenSSH's default cipher
                      (chacha20-poly1305@openssh.com, as asyncssh's default)
  openssh-aes128-gcm  ``ssh -N -L -c aes128-gcm@openssh.com``
  lablink             a ``lablink tunnel`` process with one forward (asyncssh; it
                      offers aes128-gcm first and holds a PTY session, see below)

and is measured with
  throughput  one GET /big?bytes=<size> read to EOF on a raw socket (MiB/s),
              after one uncounted 16 MiB warm-up transfer; the median of
              ``--transfers`` (5) such transfers, made in rounds that take the
              paths in turn (one transfer alone varies by +-30 % on a shared
              2-core machine);
  latency     <requests> sequential HTTP/1.0 GETs, each on a NEW TCP connection
              (connect, one request, read to EOF; median and p99 in ms), after
              10 uncounted ones.

OpenSSH's numbers are reported as they are. Through an sshd whose connection has
only forwards (``-N``, no PTY) each new TCP connection costs ~40 ms: sshd sets
TCP_NODELAY only for sessions with a PTY, so Nagle meets the client's delayed ACK.
Lablink's service holds a PTY session on each connection for that reason.

The last line is machine-readable:
``throughput_ratio_vs_openssh=<subject MiB/s / reference MiB/s> new_conn_p50_ms=<subject
p50>`` for the path named by ``--subject`` (default ``lablink``) against
``--reference`` (default ``openssh-aes128-gcm``: the cipher Lablink negotiates); ``nan``
when the subject was not measured (the reason goes to stderr).

To add a path, write a context manager ``(Bench) -> Iterator[Endpoint]`` that sets
up the endpoint and tears it down, and append a ``TunnelPath`` to ``PATHS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.procs import free_port  # noqa: E402
from tests.helpers.site import tunnel_service_doc  # noqa: E402
from tests.helpers.sshd import HttpBackend, Sshd, http_get  # noqa: E402
from tests.helpers.tunnel import TunnelService  # noqa: E402
from tunnel.links import CIPHERS  # noqa: E402

AES128_GCM = "aes128-gcm@openssh.com"
WARMUP_BYTES = 16 << 20
WARMUP_REQUESTS = 10


@dataclass
class Bench:
    """What every path gets: the login node's sshd, the lab, a scratch directory."""

    sshd: Sshd
    backend: HttpBackend
    workdir: Path


@dataclass
class Endpoint:
    """Where a path's clients connect, and the cipher it negotiated ("" for none)."""

    host: str
    port: int
    cipher: str = ""


PathSetup = Callable[[Bench], AbstractContextManager[Endpoint]]


@dataclass(frozen=True)
class TunnelPath:
    name: str
    describe: str
    setup: PathSetup


# -- paths ----------------------------------------------------------------------------


@contextlib.contextmanager
def direct(bench: Bench) -> Iterator[Endpoint]:
    yield Endpoint(bench.backend.host, bench.backend.port)


def negotiated_cipher(bench: Bench, options: list[str]) -> str:
    """The cipher an ``ssh`` with ``options`` negotiates with the sshd (from ``-v``)."""
    log = bench.workdir / f"cipher-probe-{time.monotonic_ns()}.log"
    argv = bench.sshd.ssh_argv("-v", "-E", str(log), *options, command=["true"])
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=True)
    found = re.search(r"kex: server->client cipher: (\S+)", log.read_text(errors="replace"))
    return found.group(1) if found else "?"


def openssh(cipher: str | None) -> PathSetup:
    """``ssh -N -L`` to the lab through the sshd, with ``cipher`` (None: the default)."""

    @contextlib.contextmanager
    def setup(bench: Bench) -> Iterator[Endpoint]:
        options = ["-c", cipher] if cipher else []
        negotiated = negotiated_cipher(bench, options)
        port = free_port()
        forward = f"127.0.0.1:{port}:{bench.backend.host}:{bench.backend.port}"
        argv = bench.sshd.ssh_argv(
            "-N", "-L", forward, "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            *options,
        )  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_answers("127.0.0.1", port, proc)
            yield Endpoint("127.0.0.1", port, negotiated)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    return setup


def wait_answers(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"ssh exited with {proc.returncode}: {err.strip()}")
        try:
            http_get(host, port, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def lablink(bench: Bench) -> Iterator[Endpoint]:
    """Lablink's tunnel service (a `lablink tunnel` process) with one forward."""
    ssh = bench.sshd.ssh_settings(
        destinations=[{"hosts": bench.backend.host, "ports": {"min": 1, "max": 65535}}]
    )
    service = TunnelService(
        bench.workdir / "lablink", tunnel_service_doc(bench.workdir / "state", ssh)
    )
    service.start()
    try:
        with service.client() as client:
            resp = client.post(
                "/tunnels",
                json={"lab_id": "bench", "system": "hpc", "host": bench.backend.host,
                      "port": bench.backend.port},
            )  # fmt: skip
            resp.raise_for_status()
            doc = resp.json()
        # the service offers AES-GCM first, and the client's first choice wins
        yield Endpoint(doc["local_host"], doc["local_port"], f"{CIPHERS[0]} (asyncssh)")
    finally:
        service.stop()


PATHS: list[TunnelPath] = [
    TunnelPath("direct", "the HTTP server itself, no tunnel", direct),
    TunnelPath("openssh", "ssh -N -L, OpenSSH's default cipher", openssh(None)),
    TunnelPath("openssh-aes128-gcm", f"ssh -N -L -c {AES128_GCM}", openssh(AES128_GCM)),
    TunnelPath("lablink", "Lablink's tunnel service (asyncssh)", lablink),
]


# -- measurements ----------------------------------------------------------------------


def transfer(endpoint: Endpoint, size: int) -> float:
    """Seconds to GET /big?bytes=<size> and read it to EOF into a discarded buffer."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    request = f"GET /big?bytes={size} HTTP/1.0\r\nHost: lab\r\n\r\n".encode()
    with socket.create_connection((endpoint.host, endpoint.port), timeout=60) as sock:
        began = time.perf_counter()
        sock.sendall(request)
        first = b""
        total = 0
        while n := sock.recv_into(view):
            if len(first) < 4096:
                first += bytes(view[: min(n, 4096)])
            total += n
        elapsed = time.perf_counter() - began
    head_len = first.find(b"\r\n\r\n") + 4
    if not first.startswith(b"HTTP/1.1 200") or head_len < 4 or total - head_len != size:
        raise RuntimeError(f"bad transfer: {total} bytes, head {first[:60]!r}")
    return elapsed


def request_times(endpoint: Endpoint, count: int) -> list[float]:
    """Milliseconds for each of ``count`` GETs, each on a new TCP connection."""
    request = b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n"
    times = []
    for _ in range(count):
        began = time.perf_counter()
        with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        times.append((time.perf_counter() - began) * 1000)
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"bad answer: {data[:60]!r}")
    return times


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class Result:
    path: str
    describe: str
    cipher: str
    size_bytes: int
    seconds: list[float]
    mib_s: float
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    samples_ms: list[float] = field(repr=False)


def measure(
    paths: list[TunnelPath], bench: Bench, size: int, transfers: int, requests: int
) -> dict[str, Result]:
    """Every path's endpoint up at once; transfers in rounds that take the paths in
    turn (so that a busy moment of the machine does not fall on one path alone),
    then each path's requests."""
    with contextlib.ExitStack() as stack:
        endpoints = {}
        for path in paths:
            print(f"setting up {path.name} ...", file=sys.stderr, flush=True)
            endpoints[path.name] = stack.enter_context(path.setup(bench))
        for endpoint in endpoints.values():
            transfer(endpoint, min(size, WARMUP_BYTES))
        seconds: dict[str, list[float]] = {name: [] for name in endpoints}
        for round_ in range(transfers):
            print(f"transfers, round {round_ + 1} of {transfers} ...", file=sys.stderr, flush=True)
            for name, endpoint in endpoints.items():
                seconds[name].append(transfer(endpoint, size))
        times: dict[str, list[float]] = {}
        for name, endpoint in endpoints.items():
            print(f"requests through {name} ...", file=sys.stderr, flush=True)
            request_times(endpoint, WARMUP_REQUESTS)
            times[name] = request_times(endpoint, requests)
    return {
        path.name: Result(
            path=path.name,
            describe=path.describe,
            cipher=endpoints[path.name].cipher,
            size_bytes=size,
            seconds=seconds[path.name],
            mib_s=size / (1 << 20) / statistics.median(seconds[path.name]),
            requests=requests,
            p50_ms=statistics.median(times[path.name]),
            p99_ms=p99(times[path.name]),
            mean_ms=statistics.fmean(times[path.name]),
            max_ms=max(times[path.name]),
            samples_ms=times[path.name],
        )
        for path in paths
    }


def asyncssh_default_cipher() -> str:
    """What asyncssh's client offers first (it wins against OpenSSH's sshd)."""
    try:
        import asyncssh
    except ImportError:
        return "(asyncssh not installed)"
    algs = asyncssh.SSHClientConnectionOptions().encryption_algs
    return f"{algs[0].decode()} (asyncssh {asyncssh.__version__})"


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    names = [p.name for p in PATHS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="throughput transfer (512)")
    parser.add_argument(
        "--transfers", type=int, default=5, help="median of N transfers per path, in turns (5)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="latency requests (1000)")
    parser.add_argument("--paths", default=",".join(names), help=f"comma list of {names}")
    parser.add_argument("--subject", default="lablink", help="path of the last line (lablink)")
    parser.add_argument(
        "--reference",
        default="openssh-aes128-gcm",
        help="its baseline (openssh-aes128-gcm: the cipher Lablink's service negotiates)",
    )
    parser.add_argument("--json", type=Path, help="write every result and sample here")
    args = parser.parse_args(argv)
    chosen = [name for name in args.paths.split(",") if name]
    unknown = sorted(set(chosen) - set(names))
    if unknown or min(args.size_mib, args.transfers, args.requests) < 1:
        parser.error(f"unknown paths {unknown}" if unknown else "sizes must be positive")
    size = args.size_mib << 20

    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="lablink-bench-tunnel-") as tmp:
        bench = Bench(Sshd(Path(tmp) / "sshd"), HttpBackend(), Path(tmp))
        bench.sshd.start()
        bench.backend.start()
        try:
            paths = [path for path in PATHS if path.name in chosen]
            results = measure(paths, bench, size, args.transfers, args.requests)
        finally:
            bench.backend.stop()
            bench.sshd.stop()

    transfers = "one transfer" if args.transfers == 1 else f"median of {args.transfers}"
    print(
        f"{args.size_mib} MiB, {transfers}; {args.requests} GETs each on a new TCP "
        "connection (127.0.0.1, OpenSSH sshd on loopback)"
    )
    print(f"{'path':20} {'cipher':30} {'MiB/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in results.values():
        print(
            f"{r.path:20} {r.cipher or '-':30} {r.mib_s:9.1f} {r.p50_ms:8.3f} {r.p99_ms:8.3f} "
            f"{r.max_ms:8.3f}"
        )
    print(f"asyncssh's default cipher: {asyncssh_default_cipher()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size_mib": args.size_mib,
                    "transfers": args.transfers,
                    "requests": args.requests,
                    "subject": args.subject,
                    "reference": args.reference,
                    "results": [asdict(r) for r in results.values()],
                },
                indent=2,
            )
        )

    subject, reference = results.get(args.subject), results.get(args.reference)
    ratio = latency = math.nan
    if subject is None:
        print(
            f"no path {args.subject!r} was measured (paths: {', '.join(results)}); "
            "its figures are nan",
            file=sys.stderr,
        )
    elif reference is None:
        print(f"the reference path {args.reference!r} was not measured", file=sys.stderr)
        latency = subject.p50_ms
    else:
        print(f"ratio: {subject.path} ({subject.cipher}) / {reference.path} ({reference.cipher})")
        ratio, latency = subject.mib_s / reference.mib_s, subject.p50_ms
    print(f"throughput_ratio_vs_openssh={ratio:.3f} new_conn_p50_ms={latency:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
