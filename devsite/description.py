"""The job description (pure): what the development site honours of a UNICORE job
description, checked key by key; a description it cannot run is a ``DescriptionError``
(400) whose sentence names the key. ``job_script`` turns a description into the
bash script that both runners run, as UNICORE's TSI does."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import SiteError

JOB_TYPES = {
    "BATCH": "BATCH",
    "NORMAL": "BATCH",  # UNICORE 8
    "ON_LOGIN_NODE": "ON_LOGIN_NODE",
    "INTERACTIVE": "ON_LOGIN_NODE",  # UNICORE 8 and pyunicore's Client.execute
}
# UNICORE's time units: a unit may be any prefix of a name, the first match wins
TIME_UNITS = ((("sec", "seconds"), 1), (("min", "minutes"), 60), (("h", "hours"), 3600),
              (("d", "days"), 86400))  # fmt: skip
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCRIPT_NAME = ".lablink-devsite-job.sh"  # the job's script, in its working directory
EXIT_CODE_FILE = "UNICORE_SCRIPT_EXIT_CODE"  # as UNICORE's TSI names it


class DescriptionError(SiteError):
    """A job description that cannot be run (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


@dataclass(frozen=True)
class InlineImport:
    to: str  # relative to the job directory, checked
    data: str
    permissions: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """What the devsite honours of a UNICORE job description."""

    executable: str
    arguments: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    imports: tuple[InlineImport, ...] = ()
    queue: str | None = None
    nodes: int | None = None
    runtime: int | None = None  # seconds
    reservation: str | None = None
    gpus: int | None = None
    project: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str = "BATCH"
    login_node: str | None = None
    client_stage_in: bool = False
    stdout: str = "stdout"
    stderr: str = "stderr"
    ignore_exit_code: bool = False
    unused_resources: tuple[str, ...] = ()


def parse_runtime(value: object) -> int:
    """Seconds from a UNICORE ``Runtime``: a whole number, or a string like "3600",
    "60min", "1h", "2d" (a unit is any prefix of sec/seconds, min/minutes, h/hours,
    d/days, as UNICORE's UnitParser accepts)."""
    if isinstance(value, bool):
        raise DescriptionError("Resources.Runtime must be a number of seconds or a time.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(\w*)\s*", value)
        if not m:
            raise DescriptionError(
                f"Resources.Runtime '{value}' is not a time; write e.g. 3600, '60min' or '1h'."
            )
        unit = m.group(2)
        found = (f for names, f in TIME_UNITS if any(n.startswith(unit) for n in names))
        factor = next(found, None)
        if factor is None:
            raise DescriptionError(
                f"Resources.Runtime has the unknown unit '{unit}'; use sec, min, h or d."
            )
        seconds = int(m.group(1)) * factor
    else:
        raise DescriptionError("Resources.Runtime must be a number of seconds or a time.")
    if seconds <= 0:
        raise DescriptionError("Resources.Runtime must be more than zero.")
    return seconds


def relative_path(value: object, key: str) -> str:
    """A path inside the job directory, as "a/b"; refuses absolute paths and '..'."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise DescriptionError(f"{key} must be a file name inside the job directory.")
    if value.startswith("/"):
        raise DescriptionError(f"{key} '{value}' must be relative to the job directory.")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise DescriptionError(f"{key} '{value}' must stay inside the job directory.")
    return "/".join(parts)


def parse_permissions(value: object, key: str) -> int:
    """Unix permissions from "rwxr-x---" (or the owner's part alone, "r-x")."""
    if not isinstance(value, str) or not re.fullmatch(r"([r-][w-][x-]){1,3}", value):
        raise DescriptionError(f"{key} must look like 'rwxr-xr--'.")
    mode = 0
    for i, ch in enumerate(value.ljust(9, "-")):
        if ch != "-":
            mode |= 1 << (8 - i)
    return mode


def _text(value: object, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise DescriptionError(f"{key} must be a string.")


def _string(desc: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = desc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DescriptionError(f"{where}{key} must be a string.")
    return value


def _count(value: object, key: str, minimum: int) -> int:
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) < 10:
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DescriptionError(f"{key} must be a whole number of at least {minimum}.")
    return value


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise DescriptionError(f"{key} must be true or false.")


def _environment(value: object) -> dict[str, str]:
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = [(str(k), _text(v, f"Environment.{k}")) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise DescriptionError('Environment entries must be strings like "NAME=value".')
            name, _, val = item.partition("=")
            pairs.append((name.strip(), val.strip()))
    else:
        raise DescriptionError('Environment must be an object or a list of "NAME=value".')
    for name, _ in pairs:
        if not ENV_NAME.match(name):
            raise DescriptionError(f"Environment has the invalid variable name '{name}'.")
    return dict(pairs)


def _imports(value: object) -> tuple[InlineImport, ...]:
    if not isinstance(value, list):
        raise DescriptionError("Imports must be a list.")
    out = []
    for i, item in enumerate(value):
        key = f"Imports[{i}]"
        if not isinstance(item, dict):
            raise DescriptionError(f"{key} must be an object with To and Data.")
        to = relative_path(item.get("To", item.get("file")), f"{key}.To")
        source = item.get("From", item.get("source"))
        if source is not None and not (isinstance(source, str) and source.startswith("inline:")):
            raise DescriptionError(
                f"{key}.From: the development site only has inline imports; "
                "upload other files to the job's working directory."
            )
        data = item.get("Data", "")
        if isinstance(data, list):  # UNICORE ends every line with a newline
            lines = [_text(line, f"{key}.Data") for line in data]
            data = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        elif not isinstance(data, str):
            raise DescriptionError(f"{key}.Data must be a string or a list of lines.")
        perms = item.get("Permissions")
        mode = parse_permissions(perms, f"{key}.Permissions") if perms is not None else None
        out.append(InlineImport(to, data, mode))
    return tuple(out)


def _tags(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t for t in re.split(r"[ +,]", value) if t)
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(value)
    raise DescriptionError("Tags must be a list of strings.")


def parse_description(desc: object, gpu_resource: str = "GPUS") -> JobSpec:
    """Check a UNICORE job description; unknown keys are ignored, as UNICORE does."""
    if not isinstance(desc, dict):
        raise DescriptionError("The job description must be a JSON object.")
    executable = desc.get("Executable")
    if not isinstance(executable, str) or not executable.strip():
        raise DescriptionError(
            "The job description needs an Executable (applications are not available here)."
        )
    args = desc.get("Arguments", [])
    if not isinstance(args, list):
        raise DescriptionError("Arguments must be a list of strings.")
    arguments = tuple(_text(a, "Arguments") for a in args)
    environment = _environment(desc["Environment"]) if "Environment" in desc else {}
    imports = _imports(desc["Imports"]) if "Imports" in desc else ()

    res = desc.get("Resources", {})
    if not isinstance(res, dict):
        raise DescriptionError("Resources must be an object.")
    queue = res.get("Queue")
    if queue is not None and not isinstance(queue, str):
        raise DescriptionError("Resources.Queue must be a string.")
    nodes = _count(res["Nodes"], "Resources.Nodes", 1) if "Nodes" in res else None
    runtime = parse_runtime(res["Runtime"]) if "Runtime" in res else None
    gpu_key = f"Resources.{gpu_resource}"
    gpus = _count(res[gpu_resource], gpu_key, 0) if gpu_resource in res else None
    reservation = _string(res, "Reservation", "Resources.")
    project = _string(desc, "Project") or _string(res, "Project", "Resources.")
    known = {"Queue", "Nodes", "Runtime", "Reservation", "Project", gpu_resource}

    raw_type = desc.get("Job type", "BATCH")
    if not isinstance(raw_type, str):
        raise DescriptionError("Job type must be a string.")
    job_type = JOB_TYPES.get(raw_type.upper())
    if job_type is None:
        raise DescriptionError(
            f"Job type '{raw_type}' is not available here; use BATCH or ON_LOGIN_NODE."
        )
    stage_in = desc.get("haveClientStageIn", False)
    return JobSpec(
        executable=executable,
        arguments=arguments,
        environment=environment,
        imports=imports,
        queue=queue,
        nodes=nodes,
        runtime=runtime,
        reservation=reservation,
        gpus=gpus,
        project=project,
        name=_string(desc, "Name"),
        tags=_tags(desc["Tags"]) if "Tags" in desc else (),
        job_type=job_type,
        login_node=_string(desc, "Login node"),
        client_stage_in=_flag(stage_in, "haveClientStageIn"),
        stdout=relative_path(desc.get("Stdout", "stdout"), "Stdout"),
        stderr=relative_path(desc.get("Stderr", "stderr"), "Stderr"),
        ignore_exit_code=_flag(desc.get("IgnoreNonZeroExitCode", False), "IgnoreNonZeroExitCode"),
        unused_resources=tuple(sorted(k for k in res if k not in known)),
    )


def submitted_copy(desc: Mapping[str, Any]) -> dict[str, Any]:
    """The description as ``/submitted`` shows it: inline data replaced, as UNICORE does."""
    copy = dict(desc)
    if isinstance(copy.get("Imports"), list):
        copy["Imports"] = [
            {**item, "Data": "n/a"} if isinstance(item, dict) and "Data" in item else item
            for item in copy["Imports"]
        ]
    return copy


def job_script(
    spec: JobSpec, job_id: str, directory: Path, login: Mapping[str, str] | None = None
) -> str:
    """The job's bash script, as UNICORE's TSI writes it: into the job's directory, the
    variables of the uid's ``login`` (``HOME``, ``SHELL``) exported, then the
    job's ``Environment`` (names checked, values quoted), then one line
    ``<Executable> <Arguments...>``, the arguments joined with spaces as they are, for
    the shell to expand (UNICORE's behaviour), then its exit code recorded in
    ``UNICORE_SCRIPT_EXIT_CODE``."""
    lines = ["#!/bin/bash", f"# Job {job_id}, written by Lablink's UNICORE development site."]
    lines.append(f"cd {shlex.quote(str(directory))} || exit 1")
    for name, value in (login or {}).items():
        lines.append(f"export {name}={shlex.quote(value)}")
    for name, value in spec.environment.items():
        if not ENV_NAME.match(name):
            raise DescriptionError(f"Environment has the invalid variable name '{name}'.")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(" ".join([spec.executable, *spec.arguments]))
    exit_code_file = shlex.quote(str(directory / EXIT_CODE_FILE))
    lines += ["code=$?", f'echo "$code" > {exit_code_file}', 'exit "$code"', ""]
    return "\n".join(lines)
