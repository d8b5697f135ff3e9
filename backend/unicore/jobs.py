"""UNICORE job descriptions for labs, and what a job's status means for a lab (pure).

The start script is fixed: it is the same text for every lab of a system and
holds only what the site's admins wrote (``setup`` lines, the lab command).
Everything that comes from a person or the hub travels in ``Environment``,
so no option value is ever read by a shell as code.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..states import LabState
from .config import UnicoreSystem, is_local_host

SCRIPT_NAME = "start.sh"
LAB_FILE = "lab.json"

# variables the start script or the driver own; the hub may not set them
OWN = frozenset({"PATH", "HOME", "SHELL", "PWD", "JUPYTERHUB_SERVICE_URL", "LABLINK_LAB_ID"})

_SCRIPT = """\
#!/bin/bash
# Lablink start script: the same for every lab of this system. Values come
# from the job's environment; this text holds nothing a person typed.
set -eu
{setup}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
host=${{LABLINK_LAB_HOST:-$(hostname -f 2>/dev/null || hostname)}}
printf '{{"host": "%s", "port": %s}}\\n' "$host" "$port" > {lab_file}.tmp
mv {lab_file}.tmp {lab_file}
export JUPYTERHUB_SERVICE_URL="http://${{LABLINK_LAB_BIND:-0.0.0.0}}:${{port}}${{JUPYTERHUB_SERVICE_PREFIX}}"
echo "lablink: starting JupyterLab on $host:$port"
exec {command}
"""


def start_script(system: UnicoreSystem) -> str:
    """The start script for every lab of ``system`` (the admin's setup and command)."""
    setup = "\n".join(system.setup) if system.setup else "# (no setup lines configured)"
    command = " ".join(shlex.quote(a) for a in [*system.lab_command, *system.lab_args])
    return _SCRIPT.format(setup=setup, lab_file=LAB_FILE, command=command)


def job_environment(
    system: UnicoreSystem, hub_env: dict[str, str], *, lab_id: str, prefix: str
) -> dict[str, str]:
    """The job's environment: the admin's variables, then the hub's, then Lablink's own."""
    env = dict(system.environment)
    env.update({k: v for k, v in hub_env.items() if k not in OWN})
    through = system.ssh.hub_url_for_labs() if system.tunnel == "ssh" and system.ssh else None
    if through is not None:
        # compute nodes reach the hub's API only through the login nodes' reverse forward
        for key in HUB_API_VARIABLES:
            if env.get(key):
                env[key] = rebase(env[key], through)
    env["JUPYTERHUB_SERVICE_PREFIX"] = prefix
    env["LABLINK_LAB_ID"] = lab_id
    return env


HUB_API_VARIABLES = ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL")


def rebase(url: str, base: str) -> str:
    """``url`` with its scheme and host:port taken from ``base`` (its path kept)."""
    parts, new = urlsplit(url), urlsplit(base)
    return urlunsplit((new.scheme, new.netloc, parts.path, parts.query, parts.fragment))


def runtime_seconds(minutes: int) -> int:
    return minutes * 60


def job_description(
    system: UnicoreSystem,
    options: dict[str, Any],
    *,
    lab_id: str,
    user_name: str,
    server_name: str,
    env: dict[str, str],
    prefix: str,
) -> dict[str, Any]:
    """The JSON UNICORE/X gets for a lab, from options the catalog has validated."""
    partition = system.partitions[options["partition"]]
    desc: dict[str, Any] = {
        "Name": f"lablink-{user_name}" + (f"-{server_name}" if server_name else ""),
        "Executable": "bash",
        "Arguments": [SCRIPT_NAME],
        "Imports": [{"From": "inline://dummy", "To": SCRIPT_NAME, "Data": start_script(system)}],
        "Environment": job_environment(system, env, lab_id=lab_id, prefix=prefix),
        "Tags": ["lablink", job_tag(lab_id)],
    }
    resources: dict[str, Any] = {"Runtime": str(runtime_seconds(options["runtime"]))}
    if partition.interactive:
        desc["Job type"] = "ON_LOGIN_NODE"
        if partition.login_node:
            desc["Login node"] = partition.login_node
    else:
        desc["Job type"] = "BATCH"
        resources["Queue"] = options["partition"]
        resources["Nodes"] = str(options["nodes"])
        if options.get("gpus"):
            resources[system.gpu_resource] = str(options["gpus"])
        if options.get("reservation"):
            resources["Reservation"] = options["reservation"]
    desc["Resources"] = resources
    if options.get("project"):
        desc["Project"] = options["project"]
    return desc


def job_tag(lab_id: str) -> str:
    """The tag that finds a lab's job again (also when its URL was never stored)."""
    return f"lablink-{lab_id}"


def user_preferences(options: dict[str, Any]) -> str:
    """``X-UNICORE-User-Preferences``: the account to run as and the project (group)."""
    parts = [f"uid:{options['account']}"]
    if options.get("project"):
        parts.append(f"group:{options['project']}")
    return ",".join(parts)


# -- what a job's status means -------------------------------------------------------

ACTIVE_STATUSES = frozenset({"STAGINGIN", "READY", "QUEUED", "RUNNING", "STAGINGOUT", "UNDEFINED"})
ENDED_STATUSES = frozenset({"SUCCESSFUL", "FAILED"})


def lab_state_for(status: str) -> LabState | None:
    """The lab state a starting lab is in while its job has ``status`` (None: ended)."""
    if status in ("QUEUED",):
        return LabState.QUEUED
    if status in ("RUNNING", "STAGINGOUT"):
        return LabState.STARTING
    if status in ENDED_STATUSES:
        return None
    return LabState.SUBMITTED  # STAGINGIN, READY, UNDEFINED and what a newer UNICORE adds


@dataclass(frozen=True)
class LabAddress:
    host: str
    port: int


HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")


class BadLabFile(ValueError):
    """lab.json is not what the start script writes; the message is for the admin log."""


def parse_lab_file(data: bytes, system: UnicoreSystem) -> LabAddress:
    """Read ``lab.json`` (written by the job, so it is data to check, not to trust)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadLabFile(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadLabFile("not a JSON object")
    host, port = doc.get("host"), doc.get("port")
    if not isinstance(host, str) or not HOST.fullmatch(host):
        raise BadLabFile(f"host {str(host)[:80]!r} is not a host name or address")
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
        raise BadLabFile(f"port {str(port)[:20]!r} is not a port number from 1024 to 65535")
    explicit = [pat for pat in system.lab_hosts if pat != "*"]
    if not any(fnmatch.fnmatchcase(host, pat) for pat in system.lab_hosts):
        raise BadLabFile(f"host {host!r} is not among the system's lab_hosts")
    if is_local_host(host) and not any(fnmatch.fnmatchcase(host, pat) for pat in explicit):
        raise BadLabFile(f"host {host!r} is a local address that lab_hosts does not name")
    return LabAddress(host, port)
