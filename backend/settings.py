"""Site settings: one YAML file, validated at start.

A bad file stops the service with a message that names the key and the line,
for example::

    site file site.yaml, line 7: systems.local.comand: not a known setting

Secrets are never written in the file; tokens name the environment variable
that holds them (``secret_env``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .cloud.config import KubernetesSystem, UserlabManager
from .config_base import NAME_PATTERN, Strict
from .sshconfig import TunnelService
from .unicore.config import UnicoreSystem
from .vos import IdentitySettings, VOSettings


class SettingsError(Exception):
    """The site file is missing, unreadable or invalid; the message is for the admin."""


class TokenSettings(Strict):
    """A bearer token that may call the backend.

    ``role: hub`` tokens act for the user the hub names in each request;
    ``role: admin`` tokens see and stop every lab.
    """

    name: str = Field(
        pattern=NAME_PATTERN, description="a name for logs: lower-case letters, digits, '-'"
    )
    secret_env: str = Field(
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable that holds the token (16 characters or more)",
    )
    role: Literal["hub", "admin"] = Field(
        default="hub",
        description="'hub': acts for the user named in each request; 'admin': sees and stops "
        "every lab",
    )


class LocalSystem(Strict):
    """Labs as processes on the backend's own machine (demo and development)."""

    kind: Literal["local"] = Field(description="'local': each lab is a process on this machine")
    display_name: str = Field(default="", description="the name people see in the form")
    description: str = Field(default="", description="one line shown beside the name")
    command: list[str] = Field(
        default_factory=lambda: ["jupyterhub-singleuser"],
        min_length=1,
        description="the lab's command; a bare name is looked up beside the backend's Python "
        "first, then on PATH",
    )
    args: list[str] = Field(default_factory=list, description="extra arguments for the command")
    allow_root: bool | None = Field(
        default=None,
        description="pass --allow-root to the lab; unset: only when the backend runs as root",
    )
    start_timeout: float = Field(
        default=120, gt=0, le=3600, description="seconds a lab may take to answer before it fails"
    )
    stop_grace: float = Field(
        default=5, ge=0, le=300, description="seconds between SIGTERM and SIGKILL on stop"
    )
    output_lines: int = Field(
        default=20, ge=1, le=500, description="lines of the lab's output kept in its last event"
    )


SystemSettings = Annotated[
    LocalSystem | UnicoreSystem | KubernetesSystem, Field(discriminator="kind")
]
SYSTEM_KINDS = ("local", "unicore", "kubernetes")


class Settings(Strict):
    """The site file: what the backend offers and how it is reached."""

    site_name: str = Field(default="Lablink", description="the site's name, shown to people")
    state_dir: Path = Field(
        default=Path(".lablink"),
        description="where the SQLite database and lab directories live (`--state-dir` "
        "overrides it)",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL, e.g. postgresql://user@host/db; empty: SQLite in "
        "state_dir; LABLINK_DATABASE_URL overrides it",
    )
    tokens: list[TokenSettings] = Field(
        min_length=1, description="who may call the backend (bearer tokens)"
    )
    default_system: str = Field(
        description="the system of a start request that names none (one of `systems`)"
    )
    tunnel_service: TunnelService = Field(
        default_factory=TunnelService,
        description="the SSH tunnel service: its URL and token (backend), bind address and "
        "port range (service)",
    )
    userlab_manager: UserlabManager = Field(
        default_factory=UserlabManager,
        description="the UserLab Manager: its URL and token (backend), and how it reaches "
        "Kubernetes (manager)",
    )
    systems: dict[str, SystemSettings] = Field(
        min_length=1,
        description="the systems labs run on, by name (lower-case letters, digits, '-')",
    )
    identity: IdentitySettings = Field(
        default_factory=IdentitySettings,
        description="how the OIDC provider's entitlements become accounts and projects",
    )
    vos: dict[str, VOSettings] = Field(
        default_factory=dict,
        description="virtual organizations, by name, in the order people see them; none: "
        "labs belong to no VO and have no quota",
    )

    @field_validator("systems", "vos")
    @classmethod
    def _names(cls, named: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        what = "system" if info.field_name == "systems" else "VO"
        for name in named:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(
                    f"{what} name {name!r} must be lower-case letters, digits and '-', "
                    "starting with a letter"
                )
        return named

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        if self.default_system not in self.systems:
            # raised at the key, so that the error names default_system and its line
            reason = (
                f"{self.default_system!r} is not one of the systems "
                f"({', '.join(sorted(self.systems))})"
            )
            raise _error_at(("default_system",), self.default_system, reason)
        names = [t.name for t in self.tokens]
        if len(names) != len(set(names)):
            raise ValueError("tokens: every token needs its own name")
        self._check_shared_login_nodes()
        self._check_vo_references()
        return self

    def _check_vo_references(self) -> None:
        """Every system, partition and flavor a VO names is one of the site's."""
        for name, vo in self.vos.items():
            for i, system in enumerate(vo.systems or []):
                if system not in self.systems:
                    reason = f"{system!r} is not one of the systems ({', '.join(self.systems)})"
                    raise _error_at(("vos", name, "systems", i), system, reason)
            for key, kind, attr in (
                ("partitions", "unicore", "partitions"),
                ("flavors", "kubernetes", "flavors"),
            ):
                for system, chosen in getattr(vo, key).items():
                    target = self.systems.get(system)
                    if target is None or target.kind != kind:
                        reason = f"{system!r} is not a {kind} system of this site"
                        raise _error_at(("vos", name, key, system), system, reason)
                    known = getattr(target, attr)
                    for i, item in enumerate(chosen):
                        if item not in known:
                            reason = (
                                f"{item!r} is not one of the {key} of system {system!r} "
                                f"({', '.join(known)})"
                            )
                            raise _error_at(("vos", name, key, system, i), item, reason)

    def _check_shared_login_nodes(self) -> None:
        """Systems that share a login node share its one SSH connection, so they must
        log in the same way and agree on its reverse forward to the hub."""
        first: dict[tuple[str, int], tuple[str, Any]] = {}
        for name, system in self.systems.items():
            ssh = getattr(system, "ssh", None)
            if getattr(system, "tunnel", "none") != "ssh" or ssh is None:
                continue
            login = ssh.model_dump(include=SHARED_SSH_KEYS)
            for i, node in enumerate(ssh.login_nodes):
                other = first.setdefault((node.host, node.port), (name, login))
                if other[1] != login:
                    reason = (
                        f"{node.host}:{node.port} is also a login node of system {other[0]!r}, "
                        f"which has other {', '.join(sorted(SHARED_SSH_KEYS))}; systems that "
                        "share a login node must agree on them"
                    )
                    raise _error_at(("systems", name, "ssh", "login_nodes", i), node.host, reason)

    @property
    def resolved_database_url(self) -> str:
        url = os.environ.get("LABLINK_DATABASE_URL") or self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.state_dir / 'backend.sqlite').resolve()}"
        return normalize_database_url(url)


SHARED_SSH_KEYS = {"user", "key_file", "known_hosts", "keepalive", "connect_timeout", "hub_forward"}


def _error_at(loc: tuple[str | int, ...], value: Any, reason: str) -> ValidationError:
    """A validation error at ``loc``, so that the message names that key and its line."""
    return ValidationError.from_exception_data(
        "Settings",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{reason}", {"reason": reason}),
                loc=loc,
                input=value,
            )
        ],
    )


def normalize_database_url(url: str) -> str:
    """Choose the async driver for the plain URLs admins write."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _key_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Record the line (1-based) of every key and list item in the composed YAML.

    A key given twice in one mapping is an error (YAML would keep the last one
    silently, hiding a mistake).
    """
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            if sub in out and out[sub] != key.start_mark.line + 1:
                dotted = ".".join(str(p) for p in sub)
                raise SettingsError(
                    f"line {key.start_mark.line + 1}: {dotted}: given twice "
                    f"(first on line {out[sub]})"
                )
            out[sub] = key.start_mark.line + 1
            _key_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, i)
            out[sub] = item.start_mark.line + 1
            _key_lines(item, sub, out)


def _describe(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "not a known setting"
    if kind == "missing":
        return "required but missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse_settings(
    text: str, source: str = "<site file>", overrides: dict[str, Any] | None = None
) -> Settings:
    """Parse and validate a site file's text; raise SettingsError naming key and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"site file {source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"site file {source}: the top level must be a mapping of settings")
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        try:
            _key_lines(node, (), lines)
        except SettingsError as exc:
            raise SettingsError(f"site file {source}, {exc}") from None
    data.update(overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "systems" and loc[2] in SYSTEM_KINDS:
                loc = loc[:2] + loc[3:]  # the union's tag is not a key of the file
            line = None
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
            key = ".".join(str(p) for p in loc) or "(top level)"
            where = f", line {line}" if line else ""
            problems.append(f"site file {source}{where}: {key}: {_describe(err)}")
        raise SettingsError("\n".join(problems)) from None


def load_settings(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> Settings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"site file {p}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"site file {p}: cannot be read: not UTF-8 (byte {exc.start})"
        ) from None
    return parse_settings(text, str(p), overrides)


def token_secrets(
    settings: Settings, environ: dict[str, str] | None = None
) -> dict[str, TokenSettings]:
    """Map each configured token's secret (from the environment) to its settings.

    A token whose variable is unset or empty is an error: a service must not
    start with an API nobody can call, nor with an empty secret.
    """
    env = os.environ if environ is None else environ
    out: dict[str, TokenSettings] = {}
    for tok in settings.tokens:
        secret = env.get(tok.secret_env, "")
        if len(secret) < 16:
            raise SettingsError(
                f"tokens.{tok.name}: the environment variable {tok.secret_env} must hold "
                "a secret of at least 16 characters"
            )
        out[secret] = tok
    return out


def system_secrets(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The password of each system that logs in with site-wide basic credentials.

    Read once at start from the environment; an unset variable is an error, so
    a misconfigured system fails at start, not at a person's first lab.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, system in settings.systems.items():
        auth = getattr(system, "auth", None)
        if auth is not None and auth.method == "basic":
            secret = env.get(auth.password_env, "")
            if not secret:
                raise SettingsError(
                    f"systems.{name}.auth: the environment variable {auth.password_env} "
                    "must hold the UNICORE password"
                )
            out[name] = secret
    return out


def _peer_token(needed: bool, var: str, key: str, why: str, environ: Any) -> str | None:
    """The token in ``var`` when ``needed`` (else None); too short is an error."""
    if not needed:
        return None
    env = os.environ if environ is None else environ
    token = str(env.get(var, ""))
    if len(token) < 16:
        raise SettingsError(
            f"{key}: {why}, so the environment variable {var} must hold its token "
            "(16 characters or more)"
        )
    return token


def tunnel_token(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The tunnel service's token when a system uses `tunnel: ssh` (else None)."""
    needed = any(getattr(s, "tunnel", "none") == "ssh" for s in settings.systems.values())
    var = settings.tunnel_service.token_env
    why = "a system uses tunnel: ssh (the tunnel service)"
    return _peer_token(needed, var, "tunnel_service.token_env", why, environ)


def userlab_manager_token(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The UserLab Manager's token when a system is ``kind: kubernetes`` (else None)."""
    needed = any(s.kind == "kubernetes" for s in settings.systems.values())
    var = settings.userlab_manager.token_env
    why = "a system is kind: kubernetes (the UserLab Manager)"
    return _peer_token(needed, var, "userlab_manager.token_env", why, environ)
