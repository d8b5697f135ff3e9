"""The ``lablink`` command: one subcommand per service, and ``up`` for all of them."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.resources import files
from pathlib import Path

from devsite.cli import add_arguments as add_devsite_arguments

from .files import private_umask
from .logs import setup_logging
from .settings import SettingsError, load_settings

EMBEDDED_SITE = files("backend") / "data" / "embedded.yaml"


def _log_format_default() -> str:
    """LABLINK_LOG_FORMAT (`text` or `json`, as a pod's environment sets it), else text."""
    given = os.environ.get("LABLINK_LOG_FORMAT", "").strip().lower()
    return given if given in ("text", "json") else "text"


def _setup_logging(level: str, fmt: str = "text") -> None:
    setup_logging(level, fmt)


def _serve(app: object, host: str, port: int, log_level: str) -> int:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=None)  # type: ignore[arg-type]
    return 0


def cmd_backend(args: argparse.Namespace) -> int:
    from .app import create_app
    from .replicas import SqliteInUse, hold_sqlite

    overrides = {"state_dir": args.state_dir} if args.state_dir else None
    try:
        settings = load_settings(args.site, overrides)
        app = create_app(settings)
        # SQLite: one backend per database file; held until the process ends
        hold_sqlite(settings.resolved_database_url)
    except SettingsError as exc:
        print(f"lablink backend: {exc}", file=sys.stderr)
        return 2
    except SqliteInUse as exc:
        print(exc, file=sys.stderr)
        return 2
    return _serve(app, args.host, args.port, args.log_level)


def _service_token(var: str, name: str) -> str | None:
    token = os.environ.get(var, "")
    if len(token) < 16:
        print(f"lablink {name}: set {var} to a secret of at least 16 characters", file=sys.stderr)
        return None
    return token


def cmd_tunnel(args: argparse.Namespace) -> int:
    from tunnel.app import check_hub_tls, create_app

    overrides = {"state_dir": args.state_dir} if args.state_dir else None
    try:
        settings = load_settings(args.site, overrides)
        check_hub_tls(settings)
    except SettingsError as exc:
        print(f"lablink tunnel: {exc}", file=sys.stderr)
        return 2
    token = _service_token(args.token_env or settings.tunnel_service.token_env, "tunnel")
    if token is None:
        return 2
    try:  # the metrics token is read from the environment, as the service's own
        app = create_app(settings, token, os.environ)
    except SettingsError as exc:
        print(f"lablink tunnel: {exc}", file=sys.stderr)
        return 2
    return _serve(app, args.host, args.port, args.log_level)


def cmd_userlab_manager(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from userlab_manager.app import create_app
    from userlab_manager.kube import Kube, api_client

    overrides = {"state_dir": args.state_dir} if args.state_dir else None
    try:
        settings = load_settings(args.site, overrides)
    except SettingsError as exc:
        print(f"lablink userlab-manager: {exc}", file=sys.stderr)
        return 2
    var = args.token_env or settings.userlab_manager.token_env
    token = _service_token(var, "userlab-manager")
    if token is None:
        return 2
    try:
        kube = Kube(api_client(args.kubeconfig or settings.userlab_manager.kubeconfig))
    except (ConfigException, OSError) as exc:
        print(f"lablink userlab-manager: no Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    try:  # the metrics token is read from the environment, as the service's own
        app = create_app(settings, token, kube, os.environ)
    except SettingsError as exc:
        print(f"lablink userlab-manager: {exc}", file=sys.stderr)
        return 2
    return _serve(app, args.host, args.port, args.log_level)


def cmd_hub(args: argparse.Namespace) -> int:
    """Run JupyterHub with Lablink's configuration (it reads LABLINK_* variables)."""
    config = args.config or str(files("spawner") / "jupyterhub_config.py")
    extra = args.hub_args[1:] if args.hub_args[:1] == ["--"] else args.hub_args
    argv = [sys.executable, "-m", "jupyterhub", "-f", config, *extra]
    os.execv(sys.executable, argv)  # the hub replaces this process: signals reach it directly
    return 0  # not reached


def cmd_up(args: argparse.Namespace) -> int:
    from .embedded import Embedded

    try:
        site = args.site or str(EMBEDDED_SITE)
        load_settings(site, {"state_dir": args.state_dir})  # fail early, with the key
    except SettingsError as exc:
        print(f"lablink up: {exc}", file=sys.stderr)
        return 2
    return Embedded(args, args.site, Path(str(EMBEDDED_SITE))).run()


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a site file as the services do; nothing is started, nothing reached."""
    from .check import run

    return run(args.site, secrets=not args.no_secrets, service=args.service)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a lab, its handle and its events from the backend's database."""
    import asyncio

    from .inspect import NotFound, as_json, as_text, find_lab

    state = Path(args.state_dir or os.environ.get("LABLINK_STATE_DIR", ".lablink"))
    site = args.site or (str(state / "site.yaml") if (state / "site.yaml").exists() else None)
    # the site file's state_dir, unless one is given (or there is no site file)
    overrides = {"state_dir": state} if args.state_dir or not args.site else None
    try:
        settings = load_settings(site or str(EMBEDDED_SITE), overrides)
        lab, events = asyncio.run(find_lab(settings, args.lab_id))
    except (SettingsError, NotFound) as exc:
        print(f"lablink inspect: {exc}", file=sys.stderr)
        return 2
    print((as_json if args.json else as_text)(settings, lab, events))
    return 0


def cmd_hub_forward_tls(args: argparse.Namespace) -> int:
    """Make (or keep) a CA and a certificate for the hub's API on the login nodes."""
    from .addresses import canonical
    from .certs import hub_forward_tls

    hosts = []
    for host in args.host:
        name = canonical(host)
        if name is None:
            print(f"lablink hub-forward-tls: --host {host!r} is not a host name or an IP "
                  "address", file=sys.stderr)  # fmt: skip
            return 2
        hosts.append(name)
    try:
        files = hub_forward_tls(Path(args.directory), hosts)
    except (OSError, ValueError) as exc:
        print(f"lablink hub-forward-tls: {exc}", file=sys.stderr)
        return 2
    print(
        f"# for {', '.join(hosts)}: the tunnel service reads cert_file and key_file, the "
        "backend ca_file\n"
        f"tls: {{cert_file: {files.cert_file}, key_file: {files.key_file}, "
        f"ca_file: {files.ca_file}}}"
    )
    return 0


def cmd_unicore_devsite(args: argparse.Namespace) -> int:
    """A development site that speaks UNICORE/X's REST API (the package devsite)."""
    from devsite.cli import make_app

    app = make_app(args)
    return 2 if app is None else _serve(app, args.host, args.port, args.log_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lablink", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, port: int) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to listen on")
        p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
        p.add_argument(
            "--log-format",
            default=_log_format_default(),
            choices=["text", "json"],
            help="text lines (default: $LABLINK_LOG_FORMAT, else text), or one JSON object "
            "per line for a log stack",
        )

    up = sub.add_parser("up", help="run the whole stack on this machine (the embedded default)")
    up.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("LABLINK_STATE_DIR", ".lablink")),
        help="where databases, logs and lab directories live (default .lablink)",
    )
    up.add_argument("--site", help="site file (default: the embedded one)")
    up.add_argument("--ip", default="127.0.0.1", help="address of the public hub")
    up.add_argument("--port", type=int, default=8000, help="public hub port (default 8000)")
    up.add_argument("--backend-port", type=int, default=8010, help="backend port (default 8010)")
    up.add_argument("--hub-api-port", type=int, default=8081, help="hub API port (default 8081)")
    up.add_argument(
        "--proxy-api-port", type=int, default=8001, help="proxy API port (default 8001)"
    )
    up.add_argument(
        "--devsite-port",
        type=int,
        default=8040,
        help="port of the UNICORE development site for system 'hpc' (default 8040)",
    )
    up.add_argument(
        "--tunnel-port", type=int, default=8020, help="port of the tunnel service (default 8020)"
    )
    up.add_argument(
        "--sshd-port",
        type=int,
        default=8022,
        help="port of the login node (an sshd on 127.0.0.1) for system 'hpc' (default 8022)",
    )
    up.add_argument(
        "--hub-forward-port",
        type=int,
        default=8023,
        help="port on the login node where labs reach the hub's API (default 8023)",
    )
    up.add_argument(
        "--no-tunnel",
        action="store_true",
        help="reach the labs of system 'hpc' directly, not through a login node",
    )
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    up.add_argument(
        "--log-format",
        default=_log_format_default(),
        choices=["text", "json"],
        help="the services' logs as text (default) or JSON lines (the hub's stay text)",
    )
    up.set_defaults(func=cmd_up)

    inspect = sub.add_parser(
        "inspect", help="print a lab, its handle and its events (from the backend's database)"
    )
    inspect.add_argument("lab_id", help="the lab's id, or its first characters as logs show them")
    inspect.add_argument(
        "--state-dir",
        help="the state directory (default: LABLINK_STATE_DIR or .lablink; with --site, the "
        "site file's); its site.yaml is the default site file",
    )
    inspect.add_argument("--site", help="the site file (its database_url is read)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(func=cmd_inspect, log_level="warning")

    check = sub.add_parser(
        "check",
        help="validate a site file as the services read it (no process started, no network)",
    )
    check.add_argument("--site", required=True, help="the site file (YAML)")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="only the file: do not check that the variables and files it names are there",
    )
    check.add_argument(
        "--service",
        choices=["backend", "tunnel", "userlab-manager"],
        help="only the secrets and files this service reads (default: those of every one; "
        "the tunnel's and the manager's own tokens only here)",
    )
    check.set_defaults(func=cmd_check, log_level="warning")

    backend = sub.add_parser("backend", help="the backend service")
    common(backend, 8010)
    backend.add_argument("--site", required=True, help="the site file (YAML)")
    backend.add_argument("--state-dir", type=Path, help="overrides state_dir of the site file")
    backend.set_defaults(func=cmd_backend)

    hub = sub.add_parser("hub", help="JupyterHub with Lablink's spawner and configuration")
    hub.add_argument("--config", help="a jupyterhub_config.py to use instead of Lablink's")
    hub.add_argument("hub_args", nargs=argparse.REMAINDER, help="passed on to jupyterhub")
    hub.set_defaults(func=cmd_hub)

    tunnel = sub.add_parser("tunnel", help="the SSH tunnel service")
    common(tunnel, 8020)
    tunnel.add_argument("--site", required=True, help="the site file (YAML)")
    tunnel.add_argument("--state-dir", type=Path, help="overrides state_dir of the site file")
    tunnel.add_argument(
        "--token-env", help="the variable holding the token (default: tunnel_service.token_env)"
    )
    tunnel.set_defaults(func=cmd_tunnel)

    ulm = sub.add_parser("userlab-manager", help="the UserLab Manager: lab pods on Kubernetes")
    common(ulm, 8030)
    ulm.add_argument("--site", required=True, help="the site file (YAML)")
    ulm.add_argument("--state-dir", type=Path, help="overrides state_dir of the site file")
    ulm.add_argument(
        "--token-env", help="the variable holding the token (default: userlab_manager.token_env)"
    )
    ulm.add_argument("--kubeconfig", help="overrides userlab_manager.kubeconfig of the site file")
    ulm.set_defaults(func=cmd_userlab_manager)

    tls = sub.add_parser(
        "hub-forward-tls",
        help="make a CA and a certificate for the hub's API on the login nodes "
        "(ssh.hub_forward.tls); kept while they fit, renewed when the names change",
    )
    tls.add_argument(
        "--host",
        action="append",
        required=True,
        help="a name or address labs reach it by (the host of hub_forward.url); repeat for "
        "each login node",
    )
    tls.add_argument("directory", type=Path, help="where the files go (made 0700)")
    tls.set_defaults(func=cmd_hub_forward_tls, log_level="warning")

    dev = sub.add_parser(
        "unicore-devsite",
        help="a development site speaking UNICORE/X's REST API (jobs as processes or on Slurm)",
    )
    common(dev, 8040)
    add_devsite_arguments(dev)
    dev.set_defaults(func=cmd_unicore_devsite)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    if args.func is not cmd_unicore_devsite:  # its jobs run as other users, in its files
        private_umask()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
