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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"


class SettingsError(Exception):
    """The site file is missing, unreadable or invalid; the message is for the admin."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSettings(_Strict):
    """A bearer token that may call the backend.

    ``role: hub`` tokens act for the user the hub names in each request;
    ``role: admin`` tokens see and stop every lab.
    """

    name: str = Field(pattern=NAME_PATTERN)
    secret_env: str = Field(
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding the token",
    )
    role: Literal["hub", "admin"] = "hub"


class LocalSystem(_Strict):
    """Labs as processes on the backend's own machine (demo and development)."""

    kind: Literal["local"]
    display_name: str = ""
    description: str = ""
    command: list[str] = Field(default_factory=lambda: ["jupyterhub-singleuser"], min_length=1)
    args: list[str] = Field(default_factory=list)
    allow_root: bool | None = Field(
        default=None,
        description="pass --allow-root to the lab; by default only when the backend runs as root",
    )
    start_timeout: float = Field(default=120, gt=0, le=3600)
    stop_grace: float = Field(default=5, ge=0, le=300)
    output_lines: int = Field(default=20, ge=1, le=500)


SystemSettings = Annotated[LocalSystem, Field(discriminator="kind")]
SYSTEM_KINDS = ("local",)


class Settings(_Strict):
    site_name: str = "Lablink"
    state_dir: Path = Path(".lablink")
    database_url: str = ""
    tokens: list[TokenSettings] = Field(min_length=1)
    default_system: str
    systems: dict[str, SystemSettings] = Field(min_length=1)

    @field_validator("systems")
    @classmethod
    def _system_names(cls, systems: dict[str, Any]) -> dict[str, Any]:
        for name in systems:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"system name {name!r} must be lower-case letters, digits and '-', "
                    "starting with a letter"
                )
        return systems

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        if self.default_system not in self.systems:
            raise ValueError(
                f"default_system {self.default_system!r} is not one of the systems "
                f"({', '.join(sorted(self.systems))})"
            )
        names = [t.name for t in self.tokens]
        if len(names) != len(set(names)):
            raise ValueError("tokens: every token needs its own name")
        return self

    @property
    def resolved_database_url(self) -> str:
        url = os.environ.get("LABLINK_DATABASE_URL") or self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.state_dir / 'backend.sqlite').resolve()}"
        return normalize_database_url(url)


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
    """Record the line (1-based) of every key and list item in the composed YAML."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            out[sub] = key.start_mark.line + 1
            _key_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, i)
            out[sub] = item.start_mark.line + 1
            _key_lines(item, sub, out)


def _describe(err: dict[str, Any]) -> str:
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
        _key_lines(node, (), lines)
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
