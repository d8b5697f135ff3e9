"""Site settings: one YAML file, validated at start.

A bad file stops the service with a message that names the key and the line,
for example::

    site file site.yaml, line 7: systems.local.comand: not a known setting

Secrets are never written in the file; tokens name the environment variable
that holds them (``secret_env``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .certs import read_ca
from .config_base import NAME_PATTERN, Strict
from .metrics_config import MetricsSettings
from .sshconfig import TunnelService
from .systems import registry
from .systems.base import SecretMissing, SystemSettings
from .systems.kubernetes.config import UserlabManager
from .vos import IdentitySettings, VOSettings
from .workshop_settings import WorkshopSettings


class SettingsError(Exception):
    """The site file is missing, unreadable or invalid; the message is for the admin."""


class TokenSettings(Strict):
    """A bearer token that may call the backend.

    ``role: hub`` tokens act for the user the hub names in each request;
    ``role: admin`` tokens see and stop every lab. A ``hub`` token acts as an
    admin only where ``admin_header`` allows it.
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
    admin_header: bool = Field(
        default=False,
        description="a 'hub' token whose requests may say 'X-Lablink-Admin: true' and then see "
        "and stop every lab (for a hub whose admins act on others' labs); off: such a request "
        "is refused (403)",
    )


class IdleCuller(Strict):
    """How long a running lab may go without use before the hub stops it."""

    timeout: int = Field(
        default=3600,
        ge=0,
        le=30 * 86400,
        description="seconds a running lab may be idle (no browser, kernel or terminal "
        "activity) before the hub stops it (jupyterhub-idle-culler, a hub service); 0: never",
    )
    every: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="seconds between the culler's looks at the labs",
    )


class ReplicaSettings(Strict):
    """Several backend replicas on one PostgreSQL database: how fast a dead one's labs are
    taken over, and the key that seals what a lab's start needs."""

    lease: float = Field(
        default=3.0,
        ge=1.0,
        le=60.0,
        description="seconds a replica's lease lasts; each replica renews it three times per "
        "lease, and the labs of a replica that has not renewed it (it died, or lost the "
        "database) are taken over by the others after about this long",
    )
    connections: int = Field(
        default=15,
        ge=2,
        le=500,
        description="most connections one backend process opens to PostgreSQL for requests "
        "and labs (a third kept open); it opens up to four more for its lease and "
        "notifications, so N replicas need N times (this + 4) below the server's "
        "max_connections (PostgreSQL's default is 100)",
    )
    key_env: str = Field(
        default="LABLINK_STATE_KEY",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding the key (32 characters or more; several "
        "comma-separated, newest first, to change keys) that seals the environment of a "
        "lab's start (its hub token) and the person's access token in the database, so "
        "that another replica can launch and follow the lab; required with PostgreSQL",
    )


class Branding(Strict):
    """The site's face: its name, logo, login hint and support link, on the hub's login
    page and in the header of every page."""

    name: str = Field(
        default="",
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="the name in the header and on the login page; unset: site_name",
    )
    logo: str = Field(
        default="",
        max_length=2000,
        description="the logo's address: an https:// URL, or a path on the hub's own site "
        "(starting with '/', e.g. a file in a static directory the hub serves); unset: none",
    )
    login_hint: str = Field(
        default="",
        max_length=500,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="one or two sentences on the login page that say how to log in (text, "
        "not HTML)",
    )
    login_hint_url: str = Field(
        default="",
        max_length=2000,
        description="an https:// address linked after the login hint (e.g. how to get an "
        "account); unset: none",
    )
    support_url: str = Field(
        default="",
        max_length=2000,
        description="where people get help (https:// or mailto:), linked in the header and "
        "on the login page; unset: no link",
    )

    @field_validator("logo", "login_hint_url", "support_url")
    @classmethod
    def _address(cls, url: str, info: ValidationInfo) -> str:
        if not url:
            return url
        mail = ("mailto:",) if info.field_name == "support_url" else ()
        schemes = ("https://", "http://", *mail)
        local = info.field_name == "logo" and url.startswith("/") and not url.startswith("//")
        if not (local or url.startswith(schemes)) or any(c in url for c in '"<> \t\n'):
            allowed = (
                "an http(s):// URL"
                + (" or a path on the hub starting with '/'" if info.field_name == "logo" else "")
                + (" or mailto:" if info.field_name == "support_url" else "")
            )
            raise ValueError(f"{url[:100]!r} is not {allowed} (without spaces, quotes or <>)")
        return url


class Settings(Strict):
    """The site file: what the backend offers and how it is reached."""

    site_name: str = Field(default="Lablink", description="the site's name, shown to people")
    branding: Branding = Field(
        default_factory=Branding,
        description="the site's face on the hub's pages: name, logo, login hint, support link",
    )
    idle_culler: IdleCuller = Field(
        default_factory=IdleCuller,
        description="idle labs stopped by the hub (`lablink up` runs jupyterhub-idle-culler "
        "with these; LABLINK_IDLE_TIMEOUT and LABLINK_IDLE_CULL_EVERY override them)",
    )
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
    login: Literal["demo", "oidc"] = Field(
        default="oidc",
        description="how people log in to the hub: 'oidc', with their institution's identity "
        "(every person apart), or 'demo', one shared password (`lablink up`'s demo: whoever "
        "knows it is trusted like the machine's owner). A `local` system that runs labs as "
        "one shared account is allowed only with 'demo'",
    )
    event_streams_per_user: int = Field(
        default=20,
        ge=1,
        le=10000,
        description="open event streams (GET .../events/stream) one person may have at once; "
        "one more is refused with 429 (the hub follows each lab with one stream)",
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
        description="the systems labs run on, by name (lower-case letters, digits, '-'); "
        "`kind` says which package runs their labs",
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
    replicas: ReplicaSettings = Field(
        default_factory=ReplicaSettings,
        description="backend replicas sharing one PostgreSQL database: the lease after which "
        "a dead replica's labs are taken over, and the key sealing what a start needs",
    )
    workshops: WorkshopSettings | None = Field(
        default=None,
        description="who may organize workshops and what one may hand out; unset: only hub "
        "admins may create workshops",
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings,
        description="Prometheus metrics of the backend, the tunnel service and the UserLab "
        "Manager: behind a token (default) or on ports of their own",
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
        self._check_workshop_references()
        self._check_people_apart()
        return self

    def _check_people_apart(self) -> None:
        """With a real login, no system may put everybody's labs in one account."""
        if self.login == "demo":
            return
        for name, system in self.systems.items():
            shared = system.shared_by_everybody()
            if shared is not None:
                key, reason = shared
                raise _error_at(("systems", name, key), getattr(system, key, None), reason)

    def _check_vo_references(self) -> None:
        """Every system a VO names is one of the site's, and every partition or flavor
        one that system has."""
        for name, vo in self.vos.items():
            for i, system in enumerate(vo.systems or []):
                if system not in self.systems:
                    reason = f"{system!r} is not one of the systems ({', '.join(self.systems)})"
                    raise _error_at(("vos", name, "systems", i), system, reason)
            for key in VO_CHOICES:
                for system, chosen in getattr(vo, key).items():
                    target = self.systems.get(system)
                    known = target.vo_choices().get(key) if target is not None else None
                    if known is None:
                        reason = f"{system!r} is not a system of this site that has {key}"
                        raise _error_at(("vos", name, key, system), system, reason)
                    for i, item in enumerate(chosen):
                        if item not in known:
                            reason = (
                                f"{item!r} is not one of the {key} of system {system!r} "
                                f"({', '.join(known)})"
                            )
                            raise _error_at(("vos", name, key, system, i), item, reason)

    def _check_workshop_references(self) -> None:
        """The systems, partitions, flavors and images of ``workshops.limits`` are the
        site's."""
        if self.workshops is None:
            return
        limits = self.workshops.limits
        where = ("workshops", "limits")
        for i, system in enumerate(limits.systems or []):
            if system not in self.systems:
                reason = f"{system!r} is not one of the systems ({', '.join(self.systems)})"
                raise _error_at((*where, "systems", i), system, reason)
        for key in (*VO_CHOICES, "images"):
            for system, chosen in getattr(limits, key).items():
                target = self.systems.get(system)
                has = "flavors" if key == "images" else key
                known = target.vo_choices().get(has) if target is not None else None
                if known is None:
                    reason = f"{system!r} is not a system of this site that has {has}"
                    raise _error_at((*where, key, system), system, reason)
                if key == "images":
                    continue
                for i, item in enumerate(chosen):
                    if item not in known:
                        reason = (
                            f"{item!r} is not one of the {key} of system {system!r} "
                            f"({', '.join(known)})"
                        )
                        raise _error_at((*where, key, system, i), item, reason)

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


# the keys of a VO that restrict what its members choose on a system (see vo_choices)
VO_CHOICES = ("partitions", "flavors")
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


def settings_model() -> type[Settings]:
    """The site file's model for the registered kinds: ``systems`` is a union of their
    settings, told apart by ``kind``."""
    return _settings_model(registry.settings_models())


@functools.cache
def _settings_model(models: tuple[type[SystemSettings], ...]) -> type[Settings]:
    system: Any = models[0] if len(models) == 1 else Union[models]  # noqa: UP007
    field = Settings.model_fields["systems"]
    model: type[Settings] = create_model(
        "Settings",
        __base__=Settings,
        __doc__=Settings.__doc__,
        systems=(
            dict[str, Annotated[system, Field(discriminator="kind")]],
            Field(min_length=1, description=field.description),
        ),
    )
    return model


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
    if kind == "union_tag_invalid":
        known = ", ".join(registry.kinds())
        tag = str((err.get("ctx") or {}).get("tag", ""))[:64]
        return f"{tag!r} is not a kind of system Lablink knows; allowed: {known}"
    if kind == "union_tag_not_found":
        return f"`kind` is required; one of: {', '.join(registry.kinds())}"
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
        return settings_model().model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "systems" and loc[2] in registry.kinds():
                loc = loc[:2] + loc[3:]  # the union's tag is not a key of the file
            if err["type"] == "union_tag_invalid":
                loc = (*loc, "kind")
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
        problem = token_problem(tok, env)
        if problem:
            raise SettingsError(problem)
        out[env[tok.secret_env]] = tok
    return out


def token_problem(tok: TokenSettings, env: Mapping[str, str]) -> str | None:
    """The sentence when the token's variable does not hold a usable secret, else None."""
    if len(env.get(tok.secret_env, "")) < 16:
        return (
            f"tokens.{tok.name}: the environment variable {tok.secret_env} must hold "
            "a secret of at least 16 characters"
        )
    return None


def system_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each system's own secret (a password, a signing key), by system name.

    Read once at start; a missing one is an error, so a misconfigured system fails
    at start, not at a person's first lab.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, system in settings.systems.items():
        secret = system_secret(name, system, env)
        if secret is not None:
            out[name] = secret
    return out


def system_secret(name: str, system: SystemSettings, env: Mapping[str, str]) -> str | None:
    """One system's own secret (None: it has none); SettingsError naming its key."""
    try:
        return system.secret(env)
    except SecretMissing as exc:
        raise SettingsError(f"systems.{name}.{exc.key}: {exc.message}") from None


def hub_forward_cas(settings: Settings) -> None:
    """Check at start that every hub forward's CA file is a readable PEM certificate
    (labs get it in their start script), so a misconfigured system fails at start."""
    for name, system in settings.systems.items():
        ssh = getattr(system, "ssh", None)
        if getattr(system, "tunnel", "none") == "ssh" and ssh and ssh.hub_forward:
            try:
                read_ca(ssh.hub_forward.tls.ca_file)
            except ValueError as exc:
                raise SettingsError(f"systems.{name}.ssh.hub_forward.tls.ca_file: {exc}") from None


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


def _needed(settings: Settings, peer: str) -> list[str]:
    return [name for name, s in settings.systems.items() if peer in s.peers()]


def tunnel_token(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The tunnel service's token when a system uses `tunnel: ssh` (else None)."""
    users = _needed(settings, "tunnel")
    var = settings.tunnel_service.token_env
    why = f"system {users[0]!r} uses the tunnel service" if users else ""
    return _peer_token(bool(users), var, "tunnel_service.token_env", why, environ)


def userlab_manager_token(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The UserLab Manager's token when a system's labs are pods it starts (else None)."""
    users = _needed(settings, "userlab_manager")
    var = settings.userlab_manager.token_env
    why = f"system {users[0]!r} uses the UserLab Manager" if users else ""
    return _peer_token(bool(users), var, "userlab_manager.token_env", why, environ)
