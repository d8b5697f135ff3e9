"""A login node on this machine: the files of an OpenSSH sshd on loopback that lets
one tunnel account in with one key.

``lablink up`` runs one, so that the embedded ``hpc`` system is reached as a
real site's compute nodes are: through a login node, by SSH, with the host key
checked. The tests' sshd (tests/helpers/sshd.py) is the same login node with a
process around it.

Everything lives in ``directory``: ``host_ed25519`` (the host key),
``id_ed25519`` (the client key) and ``authorized_keys``, ``known_hosts``,
``sshd_config``, ``sshd.pid`` and ``sshd.log``. Keys are made once and kept.

Run as root, the login account is ``lablinktun``, a system account with
``/bin/sh`` made on first use (root's own shell start-up files must not run in
every session, and a tunnel account is what a site gives too). Run as anyone
else, sshd runs unprivileged and can let in only that same user.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start as root without it
TUNNEL_USER = "lablinktun"


def missing() -> str | None:
    """Why no login node can run here (None when sshd and ssh-keygen are there)."""
    if not SSHD.is_file():
        return f"{SSHD} is not installed (Debian: openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed (Debian: openssh-client)"
    return None


def default_user() -> str:
    return TUNNEL_USER if os.geteuid() == 0 else getpass.getuser()


def ensure_user(name: str) -> None:
    """Make a system account with /bin/sh for SSH logins (once; root only)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            # password "*": no password, yet not "locked" (sshd without PAM refuses
            # key logins to locked accounts)
            ["useradd", "--system", "--shell", "/bin/sh", "--home-dir", "/nonexistent",
             "--no-create-home", "--password", "*", name],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip


def keygen(path: Path, comment: str) -> None:
    """A new ed25519 key pair at ``path`` and ``path.pub`` (replacing any)."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


@dataclass
class LoginNodeFiles:
    """The files of an sshd on ``host:port`` that lets ``user`` in with ``client_key``."""

    directory: Path
    port: int = 0
    host: str = "127.0.0.1"
    user: str = ""
    gateway_ports: str = "no"  # "clientspecified" lets a reverse forward bind off loopback
    comment: str = "lablink"
    extra_config: str = ""  # sshd_config lines that come first (and so win: tests)

    def __post_init__(self) -> None:
        self.user = self.user or default_user()

    @property
    def host_key(self) -> Path:
        return self.directory / "host_ed25519"

    @property
    def client_key(self) -> Path:
        """The private key of ``user`` (its public half is ``client_key.pub``)."""
        return self.directory / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file with this sshd's host key for ``[host]:port``."""
        return self.directory / "known_hosts"

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    def host_key_line(self) -> str:
        """The known_hosts line for this sshd: ``[127.0.0.1]:<port> ssh-ed25519 AAAA…``
        (the bare host on port 22, as OpenSSH writes it)."""
        kind, key = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {kind} {key}\n"

    def prepare(self) -> None:
        """Write keys (if not there yet), authorized_keys, known_hosts and sshd_config;
        pick a free port if none is set."""
        root = os.geteuid() == 0
        if root:
            ensure_user(self.user)
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, f"{self.comment}-login-node")
        if not self.client_key.exists():
            keygen(self.client_key, f"{self.comment}-tunnel")
        self.port = self.port or free_port(self.host)
        self.authorized_keys.write_text(
            self.client_key.with_name(self.client_key.name + ".pub").read_text()
        )
        self.known_hosts.write_text(self.host_key_line())
        if root:
            # the directory is root's alone: sshd reads the keys as root instead of as
            # the (unprivileged) tunnel account
            keys = (
                "AuthorizedKeysFile none\n"
                f"AuthorizedKeysCommand /bin/cat {self.authorized_keys}\n"
                "AuthorizedKeysCommandUser root\n"
            )
        else:
            keys = f"AuthorizedKeysFile {self.authorized_keys}\n"
        self.config.write_text(
            f"# Written by Lablink: a login node on {self.host}, for SSH tunnels only.\n"
            f"{self.extra_config}"
            f"ListenAddress {self.host}\n"
            f"Port {self.port}\n"
            f"HostKey {self.host_key}\n"
            f"{keys}"
            f"AllowUsers {self.user}\n"
            f"PidFile {self.pid_file}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            "AllowTcpForwarding yes\n"
            f"GatewayPorts {self.gateway_ports}\n"
            "X11Forwarding no\n"
            "AllowAgentForwarding no\n"
            "PermitTunnel no\n"
            "PrintMotd no\n"
            "UseDNS no\n"
            "ClientAliveInterval 15\n"
            "ClientAliveCountMax 3\n"
            "MaxSessions 100\n"
            "MaxStartups 100:30:200\n"
            "LogLevel VERBOSE\n"
        )

    def argv(self) -> list[str]:
        """sshd in the foreground with this configuration, logging to ``log``."""
        return [str(SSHD), "-D", "-f", str(self.config), "-E", str(self.log)]

    def ssh_settings(self, **extra: Any) -> dict[str, Any]:
        """The ``ssh:`` block of a site file's system with this as its one login node."""
        return {
            "login_nodes": [{"host": self.host, "port": self.port}],
            "user": self.user,
            "key_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            **extra,
        }


def banner(host: str, port: int, timeout: float = 1.0) -> bytes:
    """The first line an SSH server sends on a new connection (b"" if none)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""
