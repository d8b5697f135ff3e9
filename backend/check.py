"""``lablink check --site FILE [--no-secrets]``: the site file as the services read it,
without starting anything or reaching the network.

First the file is loaded and validated exactly as ``lablink backend`` loads it (every
key, every reference). Then, unless ``--no-secrets``, what the services check when
they start: every variable the site names holds its secret (the tokens' ``secret_env``,
``replicas.key_env`` with PostgreSQL, each system's own secret, the tunnel service's and
the UserLab Manager's tokens when a system needs them) and every file it names can be
read (SSH keys and known_hosts, the hub forward's certificate, key and CA, CA bundles).
Each problem is one sentence that names its key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .sealed import sealer_from
from .settings import (
    Settings,
    SettingsError,
    hub_forward_cas,
    load_settings,
    system_secret,
    token_problem,
    tunnel_token,
    userlab_manager_token,
)


def _readable(key: str, path: str, what: str) -> str | None:
    """A sentence when ``path`` cannot be read, else None."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"{key}: the {what} {path} cannot be read: {exc.strerror or exc}"
    return None


SERVICES = ("backend", "tunnel", "userlab-manager")


def _token(env: Mapping[str, str], var: str, key: str, who: str) -> str | None:
    if len(env.get(var, "")) < 16:
        return (
            f"{key}: the environment variable {var} must hold the {who}'s token (16 "
            "characters or more)"
        )
    return None


def _backend(settings: Settings, env: Mapping[str, str]) -> list[str | None]:
    """What `lablink backend` checks at start, every problem rather than the first."""
    problems: list[str | None] = [token_problem(tok, env) for tok in settings.tokens]
    checks: list[Callable[[], object]] = [
        *(
            lambda name=name, system=system: system_secret(name, system, env)
            for name, system in settings.systems.items()
        ),
        lambda: tunnel_token(settings, dict(env)),
        lambda: userlab_manager_token(settings, dict(env)),
        lambda: sealer_from(settings, env),
        lambda: hub_forward_cas(settings),
    ]
    for check in checks:
        try:
            check()
        except SettingsError as exc:
            problems.append(str(exc))
    for key, path in (
        ("tunnel_service.ca_bundle", settings.tunnel_service.ca_bundle),
        ("userlab_manager.ca_bundle", settings.userlab_manager.ca_bundle),
    ):
        if path:
            problems.append(_readable(key, path, "CA bundle"))
    for name, system in settings.systems.items():
        ca_bundle = getattr(system, "ca_bundle", "")
        if isinstance(ca_bundle, str) and ca_bundle:
            problems.append(_readable(f"systems.{name}.ca_bundle", ca_bundle, "CA bundle"))
    return problems


def _tunnel(settings: Settings, env: Mapping[str, str], own: bool) -> list[str | None]:
    """What `lablink tunnel` reads: its token (``own``: checked for that service alone),
    each SSH key and known_hosts, each hub forward's certificate and key."""
    problems: list[str | None] = []
    if own:
        var = settings.tunnel_service.token_env
        problems.append(_token(env, var, "tunnel_service.token_env", "tunnel service"))
    for name, system in settings.systems.items():
        ssh = getattr(system, "ssh", None)
        if getattr(system, "tunnel", "none") != "ssh" or ssh is None:
            continue
        where = f"systems.{name}.ssh"
        problems.append(_readable(f"{where}.key_file", ssh.key_file, "SSH key"))
        problems.append(_readable(f"{where}.known_hosts", ssh.known_hosts, "known_hosts file"))
        if ssh.hub_forward is not None:
            tls = ssh.hub_forward.tls
            for key, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
                what = "certificate" if key == "cert_file" else "private key"
                problems.append(_readable(f"{where}.hub_forward.tls.{key}", path, what))
    return problems


def _userlab_manager(settings: Settings, env: Mapping[str, str], own: bool) -> list[str | None]:
    """What `lablink userlab-manager` reads: its token (``own``), its kubeconfig."""
    manager = settings.userlab_manager
    problems: list[str | None] = []
    if own:
        var = manager.token_env
        problems.append(_token(env, var, "userlab_manager.token_env", "UserLab Manager"))
    if manager.kubeconfig:
        problems.append(_readable("userlab_manager.kubeconfig", manager.kubeconfig, "kubeconfig"))
    return problems


def check_site(
    path: str | os.PathLike[str],
    secrets: bool = True,
    environ: Mapping[str, str] | None = None,
    service: str | None = None,
) -> tuple[Settings | None, list[str]]:
    """The settings (None when the file is not valid) and every problem, one sentence
    each; ``service`` (one of SERVICES): only what that service reads, else what any
    of them reads."""
    try:
        settings = load_settings(path)
    except SettingsError as exc:
        return None, str(exc).splitlines()
    if not secrets:
        return settings, []
    env = os.environ if environ is None else environ
    found: list[str | None] = []
    if service in (None, "backend"):
        found += _backend(settings, env)
    if service in (None, "tunnel"):
        found += _tunnel(settings, env, own=service == "tunnel")
    if service in (None, "userlab-manager"):
        found += _userlab_manager(settings, env, own=service == "userlab-manager")
    problems = [p for p in found if p is not None]
    return settings, list(dict.fromkeys(problems))  # the same sentence once


def run(path: str, secrets: bool = True, service: str | None = None) -> int:
    """Print the verdict: one line on stdout (exit 0) or a sentence per problem on
    stderr (exit 2)."""
    import sys

    settings, problems = check_site(path, secrets, service=service)
    if problems or settings is None:
        for problem in problems:
            sentence = problem.rstrip(".")
            print(f"lablink check: {sentence}.", file=sys.stderr)
        return 2
    names = ", ".join(settings.systems)
    count = len(settings.systems)
    whose = f" of the {service}" if service else ""
    checked = (
        f"; secrets and files{whose} present" if secrets else "; secrets and files not checked"
    )
    plural = "system" if count == 1 else "systems"
    print(f"site {Path(path)} is valid: {count} {plural} ({names}){checked}")
    return 0
