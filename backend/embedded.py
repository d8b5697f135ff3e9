"""``lablink up``: the whole stack on one machine, supervised.

Starts the backend, then JupyterHub (which starts its proxy), each in its own
session so that Ctrl-C reaches only this supervisor, which then stops things
in order: the hub first (it stops the labs through the backend), then any lab
still active, then the backend, then whatever is left of the process tree. A
service that dies is started again (the labs keep running and the restarted
backend re-attaches to them). The supervisor is a child subreaper, so
processes orphaned below it (a lab whose backend was killed, a proxy whose hub
was killed) come back to it and are reaped or stopped by it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import getpass
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from . import loginnode, procs
from .certs import HubForwardFiles, hub_forward_tls
from .files import private_dir
from .loginnode import LoginNodeFiles
from .metrics_config import MetricsSettings
from .settings import IdleCuller, SettingsError, load_settings
from .systems.registry import kinds
from .systems.slurm.tokens import mint
from .systems.unicore.client import Credentials

PR_SET_CHILD_SUBREAPER = 36
RESTART_LIMIT = 5  # restarts of one service within RESTART_WINDOW before giving up
RESTART_WINDOW = 60.0
# the variable with the key that seals lab_secrets (replicas.key_env's default, which the
# site file of `lablink up` keeps); its key is made once in state/secrets/state_key
STATE_KEY_ENV = "LABLINK_STATE_KEY"
SECRET_VARIABLES = frozenset(
    {
        "LABLINK_HUB_TOKEN",
        "LABLINK_ADMIN_TOKEN",
        "LABLINK_BACKEND_TOKEN",
        "LABLINK_DEMO_PASSWORD",
        "LABLINK_DEMO_ADMIN_PASSWORD",
        "LABLINK_DATABASE_URL",  # may hold a database password
        STATE_KEY_ENV,  # seals what a lab's start needs in the backend's database
        "CONFIGPROXY_AUTH_TOKEN",
        "JUPYTERHUB_CRYPT_KEY",
        "LABLINK_DEVSITE_PASSWORD",
        "LABLINK_TUNNEL_TOKEN",
        "LABLINK_USERLAB_MANAGER_TOKEN",
        "LABLINK_OIDC_CLIENT_SECRET",
    }
)
DEVSITE_PASSWORD_ENV = "LABLINK_DEVSITE_PASSWORD"  # noqa: S105 (a variable name)
DEVSITE_USER = "lablink"
DEVSITE_NAME = "DEVSITE"
TUNNEL_TOKEN_ENV = "LABLINK_TUNNEL_TOKEN"  # noqa: S105 (a variable name)
USERLAB_TOKEN_ENV = "LABLINK_USERLAB_MANAGER_TOKEN"  # noqa: S105 (a variable name)
# where `make slurm-up` (.ci/peers.sh) runs its cluster
SLURM_DIR = os.environ.get("LABLINK_SLURM_DIR", "/tmp/lablink-slurm")  # noqa: S108
SLURMRESTD_PORT = int(os.environ.get("LABLINK_SLURMRESTD_PORT", "6820"))


# the account of the demo's local labs when `lablink up` runs as root
DEMO_ACCOUNT = "lablink-demo"
# SharedPasswordAuthenticator's shortest user password
DEMO_PASSWORD_MIN = 8
DEMO_ADMIN_PASSWORD_MIN = 32  # JupyterHub's SharedPasswordAuthenticator.admin_password


def crypt_key(path: Path) -> str:
    """A key from ``path``, made (32 random bytes, hex) if missing: the hub's auth_state
    key, and the backend's key for lab_secrets.

    It lives apart from the database it opens (``secrets/``, not ``hub/``), so a copy
    of the database, a backup say, does not carry the key that opens it."""
    private_dir(path.parent)
    earlier = path.parent.parent / "hub" / path.name  # where it was kept before
    if not path.exists() and earlier.exists():
        os.replace(earlier, path)
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


@dataclass(frozen=True)
class LocalTunnel:
    """How the development site's labs are reached: through a login node on this
    machine, by the tunnel service, as on a real site."""

    login_node: LoginNodeFiles
    service_port: int = 8020
    hub_api_port: int = 8081
    hub_forward_port: int = 8023

    def hub_forward_tls(self) -> HubForwardFiles:
        """A CA and a certificate for the login node's address, next to its keys
        (made once, kept)."""
        node = self.login_node
        return hub_forward_tls(node.directory / "hub-forward", [node.host], "Lablink up")

    def apply(self, doc: dict[str, Any], system: dict[str, Any]) -> None:
        system["tunnel"] = "ssh"
        system["ssh"] = self.login_node.ssh_settings(
            # the development site's "compute node" is this machine
            destinations=[{"hosts": "127.0.0.1", "ports": {"min": 1024, "max": 65535}}],
            hub_forward={
                "bind": "127.0.0.1",
                "port": self.hub_forward_port,
                "tls": self.hub_forward_tls().settings(),
            },
        )
        doc["tunnel_service"] = {
            "url": f"http://127.0.0.1:{self.service_port}",
            "token_env": TUNNEL_TOKEN_ENV,
            "hub_api": f"http://127.0.0.1:{self.hub_api_port}",
        }


@dataclass(frozen=True)
class LocalSlurm:
    """The one-node Slurm cluster `make slurm-up` runs on this machine, with slurmrestd."""

    url: str
    key_file: str


# the embedded site file's slurm system names this instead of a key file: `lablink up`
# points it at the key of the cluster on this machine, or leaves the system out
LOCAL_SLURM_KEY = "lablink-up:local-slurm-key"


def local_slurmrestd(port: int = SLURMRESTD_PORT) -> LocalSlurm | None:
    """The cluster's slurmrestd when it answers on 127.0.0.1 (a ping with a token
    minted from the cluster's key), else None."""
    key_file = Path(SLURM_DIR) / "jwt_hs256.key"
    url = f"http://127.0.0.1:{port}"
    try:
        token = mint(key_file.read_bytes(), "root", 60)
        resp = httpx.get(
            f"{url}/slurm/v0.0.38/ping",
            headers={"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": token},
            timeout=15,
            trust_env=False,
        )
        pings = resp.json().get("pings") or []
    except (OSError, httpx.HTTPError, ValueError):
        return None
    if resp.status_code != 200 or not pings or pings[0].get("ping") != "UP":
        return None
    return LocalSlurm(url, str(key_file))


def _this_machine(system: dict[str, Any], tunnel: LocalTunnel | None, doc: dict[str, Any]) -> None:
    """A batch system whose labs run on this machine: its Python's environment, and the
    tunnel through the local login node when there is one."""
    if tunnel is not None:
        tunnel.apply(doc, system)
    bin_dirs = [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
    system.setdefault("environment", {})["PATH"] = os.pathsep.join(dict.fromkeys(bin_dirs))
    if os.geteuid() == 0:  # the jobs run as root here: JupyterLab must be told (and
        # `lablink up` says so when it writes the site file)
        system["lab_args"] = [*system.get("lab_args", []), "--allow-root"]


def embedded_site(
    path: Path,
    devsite_port: int,
    tunnel: LocalTunnel | None = None,
    slurm: LocalSlurm | None = None,
) -> dict[str, Any]:
    """The embedded site file as data: its ``hpc`` system pointed at the development
    site on ``devsite_port``, its slurm system at ``slurm`` (left out without one),
    both running this Python's environment and reached through ``tunnel`` when given."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    systems = doc.get("systems", {})
    for name, system in list(systems.items()):
        if logs_in_to_devsite(system):
            system["url"] = f"http://127.0.0.1:{devsite_port}/{DEVSITE_NAME}/rest/core"
            _this_machine(system, tunnel, doc)
        elif (system.get("auth") or {}).get("key_file") == LOCAL_SLURM_KEY:
            if slurm is None:
                del systems[name]
                continue
            system["url"] = slurm.url
            system["auth"]["key_file"] = slurm.key_file
            # the cluster runs jobs as Unix users: the people's labs run as this one
            system["access"] = [{"users": ["*"], "accounts": [getpass.getuser()]}]
            _this_machine(system, tunnel, doc)
        elif system.get("run_as") == "":
            demo_local(system)
    if os.environ.get("LABLINK_OIDC_ISSUER"):
        # people log in as themselves: no system may put them in one account
        doc["login"] = "oidc"
        namespace = os.environ.get("LABLINK_OIDC_ENTITLEMENT_NAMESPACE", "")
        if namespace:  # the entitlements that give accounts, as the hub's groups
            doc["identity"] = {
                "namespace": namespace,
                "authority": os.environ.get("LABLINK_OIDC_ENTITLEMENT_AUTHORITY", ""),
            }
        for name, system in list(systems.items()):
            kind = kinds().get(str(system.get("kind")))
            if kind is not None and kind.settings.model_validate(system).shared_by_everybody():
                del systems[name]
        if doc.get("default_system") not in systems and systems:
            doc["default_system"] = next(iter(systems))
        # the demo's hint (any name, the shared password) is not how OIDC logs in
        (doc.get("branding") or {}).pop("login_hint", None)
    for name, vo in list((doc.get("vos") or {}).items()):
        # a VO only for systems left out has nothing to offer
        if vo.get("systems") is not None:
            vo["systems"] = [s for s in vo["systems"] if s in systems]
            if not vo["systems"]:
                del doc["vos"][name]
    return doc


def demo_local(system: dict[str, Any]) -> None:
    """Whose account the demo's labs on this machine run in (a local system as data).

    As root, never root by itself: the labs run in the unprivileged account
    ``lablink-demo`` when that account can run this Python. Where it cannot (a
    Python under /root, as pyenv installs it there), the site file says so in the open
    (``allow_root: true``) and `lablink up` warns: labs then run as root, which only
    the one-person demo may."""
    if os.geteuid() != 0:
        return
    if others_can_run(Path(sys.executable)):
        system["run_as"] = demo_account()
    else:
        system["allow_root"] = True


def others_can_run(python: Path) -> bool:
    """Whether an account other than its owner can run ``python`` and read its library
    (every directory on the way searchable by others)."""
    needed = [python.resolve(), Path(sys.base_prefix).resolve() / "lib"]
    for path in needed:
        for part in (path, *path.parents):
            try:
                mode = part.stat().st_mode
            except OSError:
                return False
            if not mode & 0o001:
                return False
    return True


def demo_account() -> str:
    """The Unix account the demo's local labs run as when `lablink up` runs as root,
    made (with a home) if the machine has none."""
    try:
        pwd.getpwnam(DEMO_ACCOUNT)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/bash", DEMO_ACCOUNT],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return DEMO_ACCOUNT


def logs_in_to_devsite(system: Any) -> bool:
    """Whether a system (as data) logs in to the development site `lablink up` runs: its
    password is the one `lablink up` makes for it."""
    auth = system.get("auth") if isinstance(system, dict) else None
    return isinstance(auth, dict) and auth.get("password_env") == DEVSITE_PASSWORD_ENV


def uses_devsite(site: str) -> bool:
    """Whether a system of the site logs in to the development site `lablink up` runs."""
    try:
        doc = yaml.safe_load(Path(site).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False
    return any(logs_in_to_devsite(s) for s in (doc.get("systems") or {}).values())


def site_metrics(site: str) -> MetricsSettings:
    """The site file's ``metrics`` (its defaults when the file does not say)."""
    try:
        doc = yaml.safe_load(Path(site).read_text(encoding="utf-8")) or {}
        return MetricsSettings.model_validate(doc.get("metrics") or {})
    except (OSError, yaml.YAMLError, ValueError, AttributeError):
        return MetricsSettings()


def site_idle_culler(site: str) -> IdleCuller:
    """The site file's ``idle_culler`` (its defaults when the file does not say; the
    backend checks the whole file and refuses a bad one with its own sentence)."""
    try:
        doc = yaml.safe_load(Path(site).read_text(encoding="utf-8")) or {}
        return IdleCuller.model_validate(doc.get("idle_culler") or {})
    except (OSError, yaml.YAMLError, ValueError, AttributeError):
        return IdleCuller()


@dataclass(frozen=True)
class SiteTunnels:
    """What a site file needs of `lablink up` for its SSH tunnels."""

    token_env: str  # the variable with the tunnel service's token
    port: int  # where the tunnel service listens (from tunnel_service.url)
    own_login_node: bool  # a system's login node is the one `lablink up` runs


def site_tunnels(site: str, state: Path) -> SiteTunnels | None:
    """None when no system of the site uses ``tunnel: ssh``. A login node is
    `lablink up`'s own when its key is in ``<state>/ssh``."""
    try:
        doc = yaml.safe_load(Path(site).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    systems = [s for s in (doc.get("systems") or {}).values() if isinstance(s, dict)]
    tunneled = [s for s in systems if s.get("tunnel") == "ssh"]
    if not tunneled:
        return None
    own = str(state / "ssh") + os.sep
    ours = any(str((s.get("ssh") or {}).get("key_file", "")).startswith(own) for s in tunneled)
    token_env, port = _peer(doc, "tunnel_service", TUNNEL_TOKEN_ENV, 8020)
    return SiteTunnels(token_env, port, ours)


def _peer(doc: dict[str, Any], key: str, token_env: str, port: int) -> tuple[str, int]:
    """The token variable and port of the service the site's block ``key`` names."""
    block = doc.get(key) or {}
    try:
        port = urlsplit(str(block.get("url") or f"http://127.0.0.1:{port}")).port or port
    except ValueError:
        pass  # the service itself says what is wrong with the URL
    return str(block.get("token_env") or token_env), port


def site_userlab_manager(site: str) -> tuple[str, int] | None:
    """The UserLab Manager's token variable and port when a system of the site needs
    it (its labs are pods), else None."""
    try:
        settings = load_settings(site)
    except SettingsError:
        return None  # the backend says what is wrong with the file
    if not any("userlab_manager" in s.peers() for s in settings.systems.values()):
        return None
    doc = yaml.safe_load(Path(site).read_text(encoding="utf-8")) or {}
    return _peer(doc, "userlab_manager", USERLAB_TOKEN_ENV, 8030)


def slurm_conf() -> str | None:
    """The Slurm configuration of a cluster that answers on this machine, if any."""
    candidates = [os.environ.get("SLURM_CONF", ""), f"{SLURM_DIR}/slurm.conf"]
    for conf in candidates:
        if not conf or not Path(conf).exists():
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["sinfo", "-h", "-o", "%P"],
                env={**os.environ, "SLURM_CONF": conf},
                capture_output=True,
                timeout=5,
            )
            if done.returncode == 0 and done.stdout.strip():
                return conf
    return None


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def default_proxy_command() -> str:
    installed = Path(sys.prefix) / "proxy" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(installed) if installed.exists() else "configurable-http-proxy"


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)

    async def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float) -> None:
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            procs.signal_group(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


class Embedded:
    def __init__(self, args: argparse.Namespace, site: str | None, embedded_template: Path):
        self.args = args
        self.site = site or ""
        self.template = embedded_template
        self.state = Path(args.state_dir).resolve()
        self.logs = self.state / "logs"
        self.ip = args.ip
        self.hub_url = f"http://{args.ip}:{args.port}"
        self.backend_url = f"http://127.0.0.1:{args.backend_port}"
        self.admin_token = secrets.token_urlsafe(32)
        self.devsite_port = args.devsite_port
        self.services: dict[str, Service] = {}
        self.slurm: str | None = None
        self.local_slurm: LocalSlurm | None = None
        self.tunnels: SiteTunnels | None = None
        self.userlabs: tuple[str, int] | None = None  # the manager's token variable, port
        self.login_node: LoginNodeFiles | None = None
        self.metrics = MetricsSettings()
        self.metrics_token_file = self.state / "secrets" / "metrics_token"

    def _local_tunnel(self) -> LocalTunnel | None:
        """The login node and tunnel for the embedded ``hpc`` system, when sshd is here."""
        if self.args.no_tunnel:
            return None
        problem = loginnode.missing()
        if problem is not None:
            self.say(f"no SSH tunnel for the HPC system: {problem}; its labs are reached directly")
            return None
        return LocalTunnel(
            LoginNodeFiles(self.state / "ssh", port=self.args.sshd_port),
            service_port=self.args.tunnel_port,
            hub_api_port=self.args.hub_api_port,
            hub_forward_port=self.args.hub_forward_port,
        )

    def _write_site(self) -> None:
        """Without --site: the embedded site file, made concrete for this machine."""
        if self.site:
            return
        doc = embedded_site(
            self.template, self.devsite_port, self._local_tunnel(), self.local_slurm
        )
        for name, system in doc.get("systems", {}).items():
            if system.get("allow_root"):
                self.say(
                    f"labs of system {name!r} run as root: this Python ({sys.executable}) is "
                    "not readable by other accounts; run `lablink up` as an ordinary user to "
                    "keep labs out of root"
                )
            elif system.get("run_as"):
                self.say(f"labs of system {name!r} run in the account {system['run_as']!r}")
            elif "--allow-root" in system.get("lab_args", []):
                self.say(
                    f"labs of system {name!r} run as root: its jobs run in the account that "
                    "runs `lablink up` (lab_args has --allow-root in the site file it writes); "
                    "run `lablink up` as an ordinary user to keep labs out of root"
                )
        path = self.state / "site.yaml"
        path.write_text(
            "# written by `lablink up` from the embedded site file; changes are overwritten\n"
            + yaml.safe_dump(doc, sort_keys=False),
            encoding="utf-8",
        )
        self.site = str(path)

    def say(self, text: str) -> None:
        print(f"lablink up: {text}", flush=True)

    def say_admins(self) -> None:
        """Who may open the admin page, and how they log in."""
        if not self.admins:
            return
        names = ", ".join(repr(a) for a in self.admins)
        page = f"{self.hub_url}/hub/lablink/admin"
        if os.environ.get("LABLINK_OIDC_ISSUER"):
            self.say(f"the admin page, {page}, is for {names} (LABLINK_HUB_ADMINS)")
        elif self.generated_admin_password:
            self.say(
                f"the admin page, {page}: log in as {names} with the password "
                f"{self.admin_password} (set LABLINK_DEMO_ADMIN_PASSWORD to choose it)"
            )
        else:
            self.say(
                f"the admin page, {page}: log in as {names} with the password in "
                "LABLINK_DEMO_ADMIN_PASSWORD"
            )

    def say_metrics(self) -> None:
        """Where each service's metrics are, as a command to run."""
        ports = {"backend": self.args.backend_port}
        if self.tunnels is not None:
            ports["tunnel"] = self.tunnels.port
        if self.userlabs is not None:
            ports["userlab_manager"] = self.userlabs[1]
        m = self.metrics
        if m.access == "off":
            return
        if m.access == "port":
            shown = [f"http://{m.bind}:{getattr(m.ports, svc)}/metrics" for svc in ports]
            self.say(f"metrics: curl {' '.join(shown)}")
            return
        urls = " ".join(f"http://127.0.0.1:{port}/metrics" for port in ports.values())
        if os.environ.get(m.token_env):
            self.say(f'metrics: curl -H "Authorization: Bearer ${m.token_env}" {urls}')
        else:
            self.say(
                f'metrics: curl -H "Authorization: Bearer $(cat {self.metrics_token_file})" {urls}'
            )

    def _services(self) -> dict[str, Service]:
        hub_token = secrets.token_urlsafe(32)
        password = os.environ.get("LABLINK_DEMO_PASSWORD", "")
        if password and len(password) < DEMO_PASSWORD_MIN:
            raise SystemExit(
                f"lablink up: LABLINK_DEMO_PASSWORD has {len(password)} characters; the demo "
                f"login needs at least {DEMO_PASSWORD_MIN} (or leave it unset for a random one)"
            )
        admin_password = os.environ.get("LABLINK_DEMO_ADMIN_PASSWORD", "")
        if admin_password and (
            len(admin_password) < DEMO_ADMIN_PASSWORD_MIN or admin_password == password
        ):
            raise SystemExit(
                f"lablink up: LABLINK_DEMO_ADMIN_PASSWORD must have at least "
                f"{DEMO_ADMIN_PASSWORD_MIN} characters and differ from LABLINK_DEMO_PASSWORD "
                "(or leave it unset for a random one)"
            )
        self.generated_password = not password
        if not password:
            password = secrets.token_urlsafe(12)
        self.password = password
        # with the demo login the hub's admins (LABLINK_HUB_ADMINS, else `admin`) log in
        # with a password of their own; with OpenID Connect they log in as anybody does
        oidc = bool(os.environ.get("LABLINK_OIDC_ISSUER"))
        self.admins = [
            a.strip() for a in os.environ.get("LABLINK_HUB_ADMINS", "admin").split(",") if a.strip()
        ]
        self.generated_admin_password = not admin_password and not oidc and bool(self.admins)
        if self.generated_admin_password:
            admin_password = secrets.token_urlsafe(32)
        self.admin_password = admin_password
        # the children get this environment minus every secret; each service then
        # gets only the secrets it needs
        metrics = site_metrics(self.site)
        hidden = SECRET_VARIABLES | ({self.tunnels.token_env} if self.tunnels else set())
        hidden |= {metrics.token_env}
        hidden |= {self.userlabs[0]} if self.userlabs else set()
        base = {k: v for k, v in os.environ.items() if k not in hidden}
        base["LABLINK_STATE_DIR"] = str(self.state)
        base.setdefault("LABLINK_PROXY_COMMAND", default_proxy_command())
        me = [sys.executable, "-m", "backend.cli"]
        backend_env = {
            **base,
            "LABLINK_HUB_TOKEN": hub_token,
            "LABLINK_ADMIN_TOKEN": self.admin_token,
            # the backend's alone: it seals a start's environment (the lab's hub token)
            STATE_KEY_ENV: os.environ.get(STATE_KEY_ENV)
            or crypt_key(self.state / "secrets" / "state_key"),
        }
        if "LABLINK_DATABASE_URL" in os.environ:
            backend_env["LABLINK_DATABASE_URL"] = os.environ["LABLINK_DATABASE_URL"]
        # the scraper's token, kept in the state directory: `curl` reads it from there
        scraper: dict[str, str] = {}
        if metrics.access == "token":
            self.metrics_token_file = self.state / "secrets" / "metrics_token"
            scraper[metrics.token_env] = os.environ.get(metrics.token_env) or crypt_key(
                self.metrics_token_file
            )
        self.metrics = metrics
        backend_env.update(scraper)
        hub_env = {
            **base,
            "LABLINK_BACKEND_URL": self.backend_url,
            "LABLINK_BACKEND_TOKEN": hub_token,
            "LABLINK_HUB_URL": self.hub_url,
            "LABLINK_HUB_API_PORT": str(self.args.hub_api_port),
            "LABLINK_PROXY_API_PORT": str(self.args.proxy_api_port),
            "LABLINK_DEMO_PASSWORD": password,
        }
        hub_env["LABLINK_HUB_ADMINS"] = ",".join(self.admins)
        if admin_password and not oidc:  # the hub's admins log in with it
            hub_env["LABLINK_DEMO_ADMIN_PASSWORD"] = admin_password
        # the idle culler, as the site file says unless the environment says otherwise
        culler = site_idle_culler(self.site)
        hub_env.setdefault("LABLINK_IDLE_TIMEOUT", str(culler.timeout))
        hub_env.setdefault("LABLINK_IDLE_CULL_EVERY", str(culler.every))
        if os.environ.get("LABLINK_OIDC_ISSUER"):
            # OpenID Connect login: the hub alone gets the client secret, and the key
            # that encrypts auth_state (kept in the state directory unless given)
            hub_env["LABLINK_OIDC_CLIENT_SECRET"] = os.environ.get("LABLINK_OIDC_CLIENT_SECRET", "")
            hub_env["JUPYTERHUB_CRYPT_KEY"] = os.environ.get("JUPYTERHUB_CRYPT_KEY") or crypt_key(
                self.state / "secrets" / "crypt_key"
            )
        level = self.args.log_level
        logs = ["--log-level", level, "--log-format", self.args.log_format]
        services: dict[str, Service] = {}
        if uses_devsite(self.site):
            devsite_password = secrets.token_urlsafe(24)
            backend_env[DEVSITE_PASSWORD_ENV] = devsite_password
            services["devsite"] = self._devsite(base, devsite_password, level)
        if self.login_node is not None:
            services["sshd"] = Service(
                "sshd", self.login_node.argv(), base, self.state, self.logs / "sshd.out"
            )
        if self.tunnels is not None:
            tunnel_token = secrets.token_urlsafe(32)
            backend_env[self.tunnels.token_env] = tunnel_token
            argv = [*me, "tunnel", "--site", self.site, "--state-dir", str(self.state),
                    "--port", str(self.tunnels.port), *logs]  # fmt: skip
            services["tunnel"] = Service(
                "tunnel",
                argv,
                {**base, self.tunnels.token_env: tunnel_token, **scraper},
                self.state,
                self.logs / "tunnel.log",
            )
        if self.userlabs is not None:
            var, port = self.userlabs
            manager_token = secrets.token_urlsafe(32)
            backend_env[var] = manager_token
            argv = [*me, "userlab-manager", "--site", self.site, "--state-dir", str(self.state),
                    "--port", str(port), *logs]  # fmt: skip
            services["userlab-manager"] = Service(
                "userlab-manager",
                argv,
                {**base, var: manager_token, **scraper},
                self.state,
                self.logs / "userlab-manager.log",
            )
        return services | {
            "backend": Service(
                "backend",
                [
                    *me,
                    "backend",
                    "--site",
                    self.site,
                    "--state-dir",
                    str(self.state),
                    "--port",
                    str(self.args.backend_port),
                    *logs,
                ],
                backend_env,
                self.state,
                self.logs / "backend.log",
            ),
            "hub": Service(
                "hub",
                [*me, "hub", "--", f"--log-level={level.upper()}"],
                hub_env,
                self.state / "hub",
                self.logs / "hub.log",
            ),
        }

    def _devsite(self, base: dict[str, str], password: str, level: str) -> Service:
        """The UNICORE development site. It accepts the demo users' names as accounts
        (``uid:`` preferences) but runs every job as this process's own Unix user."""
        users = ["demo", *os.environ.get("LABLINK_DEMO_USERS", "").split(",")]
        uids = ",".join(dict.fromkeys(u.strip() for u in users if u.strip()))
        env = {**base, DEVSITE_PASSWORD_ENV: password}
        argv = [
            sys.executable, "-m", "backend.cli", "unicore-devsite",
            "--host", "127.0.0.1",
            "--port", str(self.devsite_port),
            "--site", DEVSITE_NAME,
            "--user", f"{DEVSITE_USER}:env:{DEVSITE_PASSWORD_ENV}:{uids}",
            "--workdir", str(self.state / "devsite"),
            "--log-level", level,
        ]  # fmt: skip
        if self.slurm:
            argv.append("--slurm")
            env["SLURM_CONF"] = self.slurm
        else:
            argv += ["--queues", "batch,devel"]  # the partitions of the embedded site
        return Service("devsite", argv, env, self.state, self.logs / "devsite.log")

    # -- readiness ---------------------------------------------------------------

    async def _wait_http(
        self, svc: Service, url: str, headers: dict[str, str], timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not svc.running:
                    return False
                try:
                    if (await client.get(url, headers=headers)).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        return False

    async def _wait_sshd(self, svc: Service, timeout: float) -> bool:
        assert self.login_node is not None
        node = self.login_node
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and svc.running:
            first = await asyncio.to_thread(loginnode.banner, node.host, node.port)
            if first.startswith(b"SSH-2.0-"):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _wait_health(self, svc: Service, port: int, token_env: str) -> bool:
        """A service only the backend calls: healthy once /api/v1/health answers 200."""
        bearer = {"Authorization": f"Bearer {svc.env[token_env]}"}
        return await self._wait_http(svc, f"http://127.0.0.1:{port}/api/v1/health", bearer, 60)

    async def _start_all(self, stop: asyncio.Event) -> bool:
        """Start the services in order, each once the one before answers; False when one
        does not come up, or as soon as ``stop`` is set (Ctrl-C while they start)."""

        async def in_order() -> bool:
            for name in self.services:
                if not await self._start(name):
                    return False
            return True

        starting = asyncio.create_task(in_order(), name="lablink-up-start")
        stopping = asyncio.create_task(stop.wait(), name="lablink-up-stop-while-starting")
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            self.say("stopping while starting")
            starting.cancel()
            await asyncio.wait({starting})
            return False
        return starting.result()

    async def _start(self, name: str) -> bool:
        svc = self.services[name]
        await svc.start()
        if name == "devsite":
            login = Credentials(basic=(DEVSITE_USER, svc.env[DEVSITE_PASSWORD_ENV]))
            ok = await self._wait_http(
                svc,
                f"http://127.0.0.1:{self.devsite_port}/{DEVSITE_NAME}/rest/core",
                {"Authorization": login.header()},
                30,
            )
        elif name == "sshd":
            ok = await self._wait_sshd(svc, 10)
        elif name == "tunnel":
            assert self.tunnels is not None
            ok = await self._wait_health(svc, self.tunnels.port, self.tunnels.token_env)
        elif name == "userlab-manager":
            assert self.userlabs is not None
            var, port = self.userlabs
            ok = await self._wait_health(svc, port, var)
        elif name == "backend":
            ok = await self._wait_http(
                svc,
                f"{self.backend_url}/api/v1/health",
                {"Authorization": f"Bearer {self.admin_token}"},
                60,
            )
        else:
            ok = await self._wait_http(svc, f"{self.hub_url}/hub/api/", {}, 120)
        if not ok:
            self.say(f"the {name} did not come up; the end of {svc.log_path}:")
            print(procs.tail(svc.log_path, 30), file=sys.stderr, flush=True)
        return ok

    # -- supervision -------------------------------------------------------------

    async def _supervise(self, stop: asyncio.Event) -> int:
        waits = {
            asyncio.ensure_future(s.proc.wait()): s  # type: ignore[union-attr]
            for s in self.services.values()
        }
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [stop_wait, *waits], return_when=asyncio.FIRST_COMPLETED
                )
                if stop_wait in done:
                    return 0
                for fut in done:
                    svc = waits.pop(fut)
                    now = time.monotonic()
                    svc.restarts = [t for t in svc.restarts if now - t < RESTART_WINDOW]
                    if len(svc.restarts) >= RESTART_LIMIT:
                        self.say(f"the {svc.name} keeps dying; see {svc.log_path}. Stopping.")
                        return 1
                    svc.restarts.append(now)
                    code = fut.result()
                    self.say(f"the {svc.name} ended (exit code {code}); starting it again")
                    await asyncio.sleep(0.2 * 2 ** (len(svc.restarts) - 1))
                    if not await self._start(svc.name):
                        return 1
                    waits[asyncio.ensure_future(svc.proc.wait())] = svc  # type: ignore[union-attr]
        finally:
            stop_wait.cancel()
            for fut in waits:
                fut.cancel()

    async def _reap_orphans(self) -> None:
        """Reap processes reparented to us that have ended (we are a subreaper)."""
        me = os.getpid()
        managed = {s.proc.pid for s in self.services.values() if s.proc}
        while True:
            for pid in procs.children_map().get(me, []):
                if pid in managed or procs.start_time(pid) is not None:
                    continue
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
            managed = {s.proc.pid for s in self.services.values() if s.proc}
            await asyncio.sleep(1.0)

    async def _stop_active_labs(self) -> None:
        """Stop labs the hub did not stop (a hub that died, a lab of a removed user)."""
        backend = self.services["backend"]
        if not backend.running:
            return
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with httpx.AsyncClient(
            base_url=f"{self.backend_url}/api/v1", headers=headers, timeout=10, trust_env=False
        ) as client:
            try:
                labs = (await client.get("/labs", params={"active": "true"})).json()
                for lab in labs:
                    await client.delete(f"/labs/{lab['id']}")
                deadline = time.monotonic() + 30
                while labs and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    labs = (await client.get("/labs", params={"active": "true"})).json()
            except (httpx.HTTPError, ValueError) as exc:
                self.say(f"could not stop the remaining labs through the backend: {exc}")

    def _kill_leftovers(self) -> None:
        me = os.getpid()
        tree = procs.descendants(me)
        procs.kill_exact(tree, signal.SIGTERM)
        time.sleep(0.5)
        procs.kill_exact(procs.descendants(me), signal.SIGKILL)
        for pid, _ in tree:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        private_dir(self.logs)
        if not self.site:  # the slurm system of the embedded site needs slurmrestd here
            self.local_slurm = await asyncio.to_thread(local_slurmrestd)  # not on the loop
        self._write_site()
        self.tunnels = site_tunnels(self.site, self.state)
        self.userlabs = site_userlab_manager(self.site)
        if self.tunnels is not None and self.tunnels.own_login_node:
            self.login_node = LoginNodeFiles(self.state / "ssh", port=self.args.sshd_port)
            await asyncio.to_thread(self.login_node.prepare)  # ssh-keygen, useradd
        if uses_devsite(self.site):
            self.slurm = await asyncio.to_thread(slurm_conf)  # asks sinfo: not on the loop
        self.services = self._services()
        reaper = asyncio.create_task(self._reap_orphans())
        code = 1
        try:
            self.say(f"state in {self.state}, logs in {self.logs}")
            if "devsite" in self.services:
                runs = f"Slurm ({self.slurm})" if self.slurm else "local processes"
                self.say(
                    f"UNICORE development site at http://127.0.0.1:{self.devsite_port}/"
                    f"{DEVSITE_NAME}/rest/core; its jobs run as {runs}"
                )
            if self.local_slurm is not None:
                self.say(
                    f"the one-node Slurm cluster's slurmrestd at {self.local_slurm.url}: system "
                    "'cluster' runs labs as its batch jobs"
                )
            if self.login_node is not None and self.tunnels is not None:
                self.say(
                    f"its labs are reached through the login node {self.login_node.host}:"
                    f"{self.login_node.port} (sshd, logs in {self.logs / 'sshd.out'} and "
                    f"{self.login_node.log}) and the tunnel service on port {self.tunnels.port}"
                )
            started = await self._start_all(stop)
            if stop.is_set():
                code = 0  # Ctrl-C while starting: stop what has started, as at any time
            elif started:
                self.say(f"JupyterHub is at {self.hub_url}")
                if self.generated_password:
                    self.say(f"log in as 'demo' with the password {self.password}")
                    self.say("(set LABLINK_DEMO_PASSWORD to choose it)")
                else:
                    self.say("log in as 'demo' with the password in LABLINK_DEMO_PASSWORD")
                self.say_admins()
                self.say_metrics()
                self.say("press Ctrl-C to stop everything")
                code = await self._supervise(stop)
        finally:
            self.say("stopping")
            await self.services["hub"].stop(60)
            await self._stop_active_labs()
            await self.services["backend"].stop(15)
            for name in ("tunnel", "sshd", "userlab-manager"):
                if name in self.services:
                    await self.services[name].stop(15)
            if "devsite" in self.services:
                await self.services["devsite"].stop(60)  # it ends its jobs first
            reaper.cancel()
            self._kill_leftovers()
            self.say("stopped")
        return code

    def run(self) -> int:
        become_subreaper()
        return asyncio.run(self._main())
