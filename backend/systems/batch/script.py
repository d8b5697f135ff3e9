"""The lab's start script, its environment, and ``lab.json`` (pure).

The start script is fixed: the same text for every lab of a system, holding only
what the site's admins wrote (``setup`` lines, the lab command) and what the
kind adds to announce the lab's address. Everything that comes from a person or
the hub travels in the job's environment, so no option value is ever read by a
shell as code.

Where labs reach the hub's API through the login nodes (``ssh.hub_forward``),
the script also makes the lab trust the CA of that port's TLS certificate
(the admin's ``tls.ca_file``, checked PEM) besides the compute node's own CAs,
through ``SSL_CERT_FILE``, so the lab's hub token goes only to the tunnel
service, never to whoever holds the port on a shared login node.

The script picks a free port, writes ``lab.json`` (``{"host": ..., "port": ...}``)
into the job's working directory (the kind may choose another place), and starts
JupyterLab in the person's home directory (``$HOME``, as the batch system set it),
so the person finds yesterday's notebooks there and the job directory keeps only
the job's files. Where ``$HOME`` is unset or not a directory, JupyterLab starts in
the job directory and the job's output says so. ``SHELL`` is the person's login
shell (``getent passwd``; else ``$SHELL``, ``/bin/bash``, ``/bin/sh``), the shell
of JupyterLab's terminals. The backend reads the address back (through UNICORE's
storage API, or from the Slurm job's comment) and checks it before it trusts it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ... import addresses, certs
from .config import BatchSystem

SCRIPT_NAME = "start.sh"
LAB_FILE = "lab.json"
MAX_LAB_FILE = 4096  # bytes: what the start script writes is far less

# variables the start script or the driver own; the hub may not set them
OWN = frozenset({"PATH", "HOME", "SHELL", "PWD", "JUPYTERHUB_SERVICE_URL", "LABLINK_LAB_ID"})
HUB_API_VARIABLES = ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL")

_SCRIPT = """\
#!/bin/bash
# Lablink start script: the same for every lab of this system. Values come
# from the job's environment; this text holds nothing a person typed.
set -eu
{prologue}
{setup}
{hub_trust}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
host=${{LABLINK_LAB_HOST:-$(hostname -f 2>/dev/null || hostname)}}
printf '{{"host": "%s", "port": %s}}\\n' "$host" "$port" > {lab_file}.tmp
mv {lab_file}.tmp {lab_file}
{announce}
export JUPYTERHUB_SERVICE_URL="http://${{LABLINK_LAB_BIND:-0.0.0.0}}:${{port}}${{JUPYTERHUB_SERVICE_PREFIX}}"
{home}
echo "lablink: starting JupyterLab on $host:$port in $PWD"
{run}
"""

# the lab's own place: the person's home and login shell (fixed text, no input)
_HOME = """\
login_shell=$(getent passwd "$(id -un)" 2>/dev/null | cut -d: -f7) || login_shell=
if [ -z "$login_shell" ] || [ ! -x "$login_shell" ]; then
  login_shell=${SHELL:-}
  if [ -z "$login_shell" ]; then
    if [ -x /bin/bash ]; then login_shell=/bin/bash; else login_shell=/bin/sh; fi
  fi
fi
export SHELL="$login_shell"
if [ -n "${HOME:-}" ] && [ -d "$HOME" ] && cd "$HOME" 2>/dev/null; then
  :
else
  echo "lablink: the home directory '${HOME:-}' is not a directory here;" \\
    "JupyterLab starts in the job directory $PWD"
fi"""


# where distributions keep their CA bundle; the first one readable is taken
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)

_HUB_TRUST = """\
# the hub's API is reached over TLS through the login node: trust its CA too
hub_ca=$(mktemp "${{TMPDIR:-/tmp}}/lablink-hub-ca.XXXXXX")
for bundle in "${{SSL_CERT_FILE:-}}" {bundles}; do
  if [ -n "$bundle" ] && [ -r "$bundle" ]; then cat "$bundle" >> "$hub_ca"; break; fi
done
cat >> "$hub_ca" <<'LABLINK_HUB_CA'
{pem}
LABLINK_HUB_CA
export SSL_CERT_FILE="$hub_ca"
"""


class BadHubCa(ValueError):
    """The site's ``hub_forward.tls.ca_file`` cannot be used; the message is for the
    admin log."""


def hub_trust(system: BatchSystem[Any]) -> str:
    """The script lines that make the lab trust the hub forward's CA (a comment
    where labs reach the hub directly); BadHubCa when the CA file is unusable."""
    ssh = system.ssh if system.tunnel == "ssh" else None
    if ssh is None or ssh.hub_forward is None:
        return "# (labs reach the hub's API directly)"
    try:
        pem = certs.read_ca(ssh.hub_forward.tls.ca_file)
    except ValueError as exc:
        raise BadHubCa(str(exc)) from None
    return _HUB_TRUST.format(bundles=" ".join(SYSTEM_BUNDLES), pem=pem.strip()).rstrip("\n")


@dataclass(frozen=True)
class ScriptHooks:
    """What a kind adds to the start script: fixed shell text of the kind, never a
    person's input. ``lab_file`` is a shell word; ``run`` gets ``{command}``."""

    prologue: str = "# (nothing to prepare)"
    lab_file: str = LAB_FILE
    announce: str = "# (the backend reads lab.json)"
    run: str = "exec {command}"


def start_script(system: BatchSystem[Any], hooks: ScriptHooks = ScriptHooks()) -> str:
    """The start script for every lab of ``system``: the admin's setup and command,
    the hub forward's CA, and the kind's ``hooks`` (how it prepares the job, where
    lab.json goes, how it tells the backend where the lab is, how it runs the lab).
    BadHubCa when the site's CA file for the hub forward is unusable."""
    setup = "\n".join(system.setup) if system.setup else "# (no setup lines configured)"
    command = " ".join(shlex.quote(a) for a in [*system.lab_command, *system.lab_args])
    return _SCRIPT.format(
        prologue=hooks.prologue,
        setup=setup,
        hub_trust=hub_trust(system),
        lab_file=hooks.lab_file,
        announce=hooks.announce,
        home=_HOME,
        run=hooks.run.format(command=command),
    )


def job_environment(
    system: BatchSystem[Any], hub_env: dict[str, str], *, lab_id: str, prefix: str
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


def rebase(url: str, base: str) -> str:
    """``url`` with its scheme and host:port taken from ``base`` (its path kept)."""
    parts, new = urlsplit(url), urlsplit(base)
    return urlunsplit((new.scheme, new.netloc, parts.path, parts.query, parts.fragment))


JOB_NAME_PREFIX = "lablink"
JOB_NAME_LIMIT = 64  # what UNICORE's TSI and Slurm keep of a job name, with room to spare
_NOT_IN_JOB_NAMES = re.compile(r"[^A-Za-z0-9_.]+")


def job_name(server_name: str) -> str:
    """What the batch system shows as the lab's job name (``squeue``): ``lablink-<server>``
    for a named lab, ``lablink`` for the person's default lab. The server name is a
    person's text: each run of characters other than letters, digits, ``_`` and ``.``
    becomes one ``-`` and the name is cut to 64 characters, a plain word to any tool.
    The name does not find the job (two people's default labs share it): the tag does."""
    word = _NOT_IN_JOB_NAMES.sub("-", server_name).strip("-.")
    name = f"{JOB_NAME_PREFIX}-{word}" if word else JOB_NAME_PREFIX
    return name[:JOB_NAME_LIMIT].rstrip("-.")


def job_tag(lab_id: str) -> str:
    """The tag that finds a lab's job again (also when its id was never stored)."""
    return f"lablink-{lab_id}"


@dataclass(frozen=True)
class LabAddress:
    host: str
    port: int


HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")


class BadLabFile(ValueError):
    """lab.json is not what the start script writes; the message is for the admin log."""


def parse_lab_file(data: bytes, system: BatchSystem[Any]) -> LabAddress:
    """Read ``lab.json`` (written by the job, so it is data to check, not to trust)."""
    if len(data) > MAX_LAB_FILE:
        raise BadLabFile(f"{len(data)} bytes, more than the {MAX_LAB_FILE} it may have")
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
    name = addresses.canonical(host)
    if name is None:
        raise BadLabFile(f"host {host!r} is not a host name or address")
    if not any(addresses.matches(name, pat) for pat in system.lab_hosts):
        raise BadLabFile(f"host {host!r} is not among the system's lab_hosts")
    if addresses.is_local(name) and not addresses.named_by(name, list(system.lab_hosts)):
        raise BadLabFile(f"host {host!r} is a local address that lab_hosts does not name")
    return LabAddress(name, port)
