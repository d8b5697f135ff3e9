"""Linux process helpers for labs that run as local processes.

A lab process runs in its own session, so it outlives a backend restart. It
is then no longer the backend's child; it is identified by its pid and its
start time (so that a recycled pid is never mistaken for the lab), and its
end is awaited with a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is none."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended, whoever reaps it
        return None
    return int(fields[19])


def is_alive(pid: int, started: int | None) -> bool:
    current = start_time(pid)
    return current is not None and (started is None or current == started)


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid``."""
    kids = children_map()
    out: list[tuple[int, int]] = []
    todo = list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        st = start_time(p)
        if st is not None:
            out.append((p, st))
        todo.extend(kids.get(p, []))
    return out


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the lab's process group (the lab leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_exact(procs: list[tuple[int, int]], sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal processes that are still the ones recorded (same pid and start time)."""
    for pid, started in procs:
        if is_alive(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


async def wait_exit(pid: int, started: int | None, timeout: float | None = None) -> bool:
    """Wait until the process ends; True if it did within ``timeout``.

    Works for processes that are not our children, through a pidfd.
    """
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if not is_alive(pid, started):
            return True
        done = loop.create_future()

        def readable() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return not is_alive(pid, started)
        finally:
            loop.remove_reader(fd)
        return True
    finally:
        os.close(fd)


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different free ports: each socket stays bound until all are chosen,
    so the kernel cannot hand out one port twice."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening_inodes(port: int) -> set[int]:
    """The socket inodes listening on TCP ``port`` (any address, IPv4 or IPv6) in this
    network namespace."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "ADDR:PORT" in hex, state 0A is LISTEN, inode is field 9
            if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                inodes.add(int(fields[9]))
    return inodes


def listens(pid: int, port: int) -> bool | None:
    """Whether the process ``pid`` or one of its descendants holds the socket that
    listens on ``port``: True, False (someone else's, or nobody's), or None when that
    cannot be told (another account's file descriptors are not readable, or no
    listener is seen here)."""
    inodes = listening_inodes(port)
    if not inodes:  # gone meanwhile, or in another network namespace
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    unknown = False
    for p in [pid, *(d for d, _ in descendants(pid))]:
        fd_dir = PROC / str(p) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            unknown = True
            continue
        except OSError:  # ended meanwhile
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd_dir / fd) in wanted:
                    return True
    return None if unknown else False


def tail(path: Path, lines: int, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    # NUL is valid UTF-8 but no text column (PostgreSQL) can hold it
    text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return "\n".join(text.splitlines()[-lines:])
