"""A site's network on one machine, with Linux network namespaces: the hub's side
(this namespace), a login node, and a compute node that only the login node can
reach, as on a real HPC site.

::

    hub (here) 10.231.0.1 ── 10.231.0.2 login node 10.231.1.1 ── 10.231.1.2 compute node

Each side routes the other's network through the login node, and the login
node does not forward IP packets, so nothing gets from the hub's side to the
compute node, or back, except through SSH. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

HUB_SIDE = "10.231.0.1"
LOGIN_OUTSIDE = "10.231.0.2"  # where the hub's side reaches the login node
LOGIN_INSIDE = "10.231.1.1"  # where compute nodes reach the login node
COMPUTE = "10.231.1.2"


class NetnsError(RuntimeError):
    """The namespaces could not be made (the message says which command failed)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@dataclass
class Site:
    """Two namespaces, ``<prefix>-login`` and ``<prefix>-compute``, wired as above."""

    prefix: str = field(default_factory=lambda: f"ll{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)

    @property
    def login(self) -> str:
        return f"{self.prefix}-login"

    @property
    def compute(self) -> str:
        return f"{self.prefix}-compute"

    def exec_argv(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``namespace`` (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", namespace, *argv]

    def create(self) -> None:
        try:
            self._create()
        except BaseException:
            self.remove()
            raise

    def _create(self) -> None:
        up, lc = f"{self.prefix}-up", f"{self.prefix}-lc"
        for ns in (self.login, self.compute):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # hub side <-> login node
        _ip("link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", self.login)
        self.made.append(up)
        _ip("addr", "add", f"{HUB_SIDE}/24", "dev", up)
        _ip("link", "set", up, "up")
        _ip("-n", self.login, "addr", "add", f"{LOGIN_OUTSIDE}/24", "dev", "eth0")
        _ip("-n", self.login, "link", "set", "eth0", "up")
        # login node <-> compute node
        _ip("-n", self.login, "link", "add", lc, "type", "veth", "peer", "name", "eth0",
            "netns", self.compute)  # fmt: skip
        _ip("-n", self.login, "addr", "add", f"{LOGIN_INSIDE}/24", "dev", lc)
        _ip("-n", self.login, "link", "set", lc, "up")
        _ip("-n", self.compute, "addr", "add", f"{COMPUTE}/24", "dev", "eth0")
        _ip("-n", self.compute, "link", "set", "eth0", "up")
        # routes through the login node, which is no router: packets never cross it
        _ip("route", "add", "10.231.1.0/24", "via", LOGIN_OUTSIDE, "dev", up)
        _ip("-n", self.compute, "route", "add", "default", "via", LOGIN_INSIDE)
        subprocess.run(
            self.exec_argv(self.login, ["sysctl", "-qw", "net.ipv4.ip_forward=0"]),
            capture_output=True,
            timeout=10,
        )

    def pids_inside(self) -> list[int]:
        pids: list[int] = []
        for ns in (self.login, self.compute):
            done = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10
            )
            pids += [int(p) for p in done.stdout.split()]
        return pids

    def remove(self) -> None:
        """Kill whatever still runs inside, then delete the namespaces (their links go
        with them) and the hub side's end of the veth."""
        for pid in self.pids_inside():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for name in reversed(self.made):
            if name.endswith(("-login", "-compute")):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            else:
                subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
        self.made.clear()
