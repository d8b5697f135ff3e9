"""The command line of ``lablink unicore-devsite``: its options, and the app they make."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_QUEUE = "local"  # without Slurm, the one queue whose jobs run as local processes


def add_arguments(dev: argparse.ArgumentParser) -> None:
    """The options after ``--host``, ``--port`` and ``--log-level``."""
    dev.add_argument("--site", default="DEVSITE", help="site name: URLs are /SITE/rest/core")
    dev.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:env:VAR[:UID,...]",
        help="a user for HTTP basic login, the password in the environment variable VAR; "
        "UIDs default to NAME",
    )
    dev.add_argument(
        "--token-env",
        action="append",
        default=[],
        metavar="VAR:NAME",
        help="a bearer token read from the environment variable VAR",
    )
    dev.add_argument(
        "--oidc-userinfo",
        default="",
        metavar="URL",
        help="an OIDC provider's userinfo endpoint: bearer tokens it accepts log in; the "
        "person's uids are the accounts of their eduperson_entitlement claims",
    )
    dev.add_argument(
        "--userinfo-cache",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --oidc-userinfo: how long the provider's answer for one token is kept "
        "(default 60; 0 asks the provider at every call, so an expired token is refused "
        "at once)",
    )
    dev.add_argument("--slurm", action="store_true", help="run BATCH jobs through Slurm")
    dev.add_argument(
        "--workdir",
        type=Path,
        default=Path(".lablink/devsite"),
        help="where job directories and the job table are kept (default .lablink/devsite)",
    )
    dev.add_argument(
        "--gpu-resource", default="GPUS", help="the job resource that asks for GPUs (GPUS)"
    )
    dev.add_argument(
        "--queues",
        default=DEFAULT_QUEUE,
        metavar="Q1,Q2",
        help="without --slurm: the queue names jobs may ask for (default local); they all "
        "run as local processes",
    )


def make_app(args: argparse.Namespace) -> Any:
    """The development site's app for these options; None after printing what is wrong."""
    from . import DevsiteConfig, parse_token, parse_user
    from .app import create_app
    from .slurm import SlurmRunner

    environ = dict(os.environ)
    try:
        users = [parse_user(spec, environ) for spec in args.user]
        tokens = [parse_token(spec, environ) for spec in args.token_env]
        if not users and not tokens and not args.oidc_userinfo:
            raise ValueError(
                "give at least one --user NAME:env:VAR, --token-env VAR:NAME or --oidc-userinfo URL"
            )
        names = [u.name for u in users]
        twice = {n for n in names if names.count(n) > 1}
        if twice:
            raise ValueError(f"the user {sorted(twice)[0]} is given twice")
        if not 0 <= args.userinfo_cache <= 86400:
            raise ValueError(f"--userinfo-cache {args.userinfo_cache:g} must be 0 to 86400 seconds")
        if not args.gpu_resource.isidentifier():
            raise ValueError(f"--gpu-resource '{args.gpu_resource}' is not a resource name")
        config = DevsiteConfig(
            users={u.name: u for u in users},
            tokens=dict(tokens),
            site=args.site,
            slurm=args.slurm,
            workdir=args.workdir,
            gpu_resource=args.gpu_resource,
            queues=tuple(q for q in args.queues.split(",") if q) or (DEFAULT_QUEUE,),
            environ=environ,
            oidc_userinfo=args.oidc_userinfo,
            userinfo_cache=args.userinfo_cache,
        )
        app = create_app(config)
        if args.slurm:
            try:
                asyncio.run(SlurmRunner(environ).partitions())
            except RuntimeError as exc:
                raise ValueError(f"Slurm does not answer (is SLURM_CONF right?): {exc}") from None
    except ValueError as exc:
        print(f"lablink unicore-devsite: {exc}", file=sys.stderr)
        return None
    return app
