"""A development site that speaks UNICORE/X's REST API (``lablink unicore-devsite``).

UNICORE/X cannot be installed everywhere Lablink is developed or tested, so this
package serves the part of its REST API that Lablink and pyunicore use, field for
field, and runs the jobs as local processes or through a real Slurm:

- ``app``: the HTTP API (``create_app(config)``) and ``Devsite``, which runs the jobs;
- ``auth``: errors and authentication (passwords, tokens, an OIDC provider's userinfo);
- ``description``: job descriptions (pure) and the job script built from them;
- ``jobs``: the job model, the local-process runner;
- ``slurm``: the Slurm runner (sbatch, squeue, scancel);
- ``table``: the store of jobs and the job table that keeps them on disk;
- ``storage``: the job working directories as UNICORE storages (files API).

Jobs survive a restart of the site, as they do one of UNICORE/X: the job table in
the workdir is read when the site starts, local processes that still run are
followed again, Slurm is asked about Slurm jobs. A clean stop (SIGTERM) ends the
site's active jobs first; a site that is killed leaves them running.

This module holds the site's configuration, the parsing of its command line
(``lablink unicore-devsite``) and ``SiteError``, the error answer of every module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

UID_PATTERN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class User:
    name: str
    password: str | None  # None: only tokens log in as this user
    uids: tuple[str, ...]


@dataclass(frozen=True)
class DevsiteConfig:
    users: Mapping[str, User]
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> user name
    site: str = "DEVSITE"
    slurm: bool = False
    workdir: Path = Path(".lablink/devsite")
    gpu_resource: str = "GPUS"
    queues: tuple[str, ...] = ("local",)  # what local mode offers (Slurm has its partitions)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    grace: float = 3.0  # seconds between SIGTERM and SIGKILL for local jobs
    lifetime_check: float = 60.0  # seconds between looks for expired jobs
    # an OIDC provider's userinfo endpoint: bearer tokens it accepts are valid here
    # (as UNICORE/X's OAuth2 authenticator does); the person's uids are the accounts
    # of their entitlements
    oidc_userinfo: str = ""
    # seconds the provider's answer for one token is kept (0: ask it at every call)
    userinfo_cache: float = 60.0
    entitlement_pattern: str = ""


def _secret(value: str, environ: Mapping[str, str], what: str) -> str:
    """A secret from the environment (``env:VAR``): never from the command line, which
    every user of the machine can read (``ps``, ``/proc/<pid>/cmdline``)."""
    if not value.startswith("env:"):
        raise ValueError(
            f"give {what} as env:VAR, the name of an environment variable that holds it "
            "(a command line is readable by everybody on the machine)"
        )
    var = value[4:]
    if not environ.get(var):
        raise ValueError(f"the environment variable {var} for {what} is not set")
    return environ[var]


def parse_user(spec: str, environ: Mapping[str, str]) -> User:
    """``NAME:env:VAR[:UID[,UID...]]``: the password is in the environment variable VAR."""
    name, _, rest = spec.partition(":")
    if rest.startswith("env:"):
        var, _, uids = rest[4:].partition(":")
        password = "env:" + var
    else:
        password, _, uids = rest.partition(":")
    if not NAME_PATTERN.match(name) or not password:
        raise ValueError(f"--user '{name}:…' must be NAME:env:VAR[:UID,…]")
    uid_list = tuple(u for u in uids.split(",") if u) or (name,)
    bad = [u for u in uid_list if not UID_PATTERN.match(u)]
    if bad or ":" in uids:
        raise ValueError(f"--user {name}: '{(bad or [uids])[0]}' is not a Unix user name")
    return User(name, _secret(password, environ, f"the password of {name}"), uid_list)


def parse_token(spec: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """``VAR:NAME`` (--token-env): (the token in VAR, user name)."""
    var, _, name = spec.rpartition(":")
    if not var or not NAME_PATTERN.match(name):
        raise ValueError("--token-env must be VAR:NAME")
    return _secret("env:" + var, environ, f"the token of {name}"), name


class SiteError(Exception):
    """An error answer of the site: an HTTP status and one sentence for a person."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
