"""UNICORE job descriptions for labs, and what a job's status means for a lab (pure).

The job runs the batch kinds' fixed start script (``backend.systems.batch.script``),
imported inline; everything from a person or the hub travels in ``Environment``,
so no option value is ever read by a shell as code. ``Executable`` and
``Arguments`` are fixed words: UNICORE's TSI writes them into the job's script
as they are.
"""

from __future__ import annotations

from typing import Any

from ...states import LabState
from ..batch.script import SCRIPT_NAME, job_environment, job_name, job_tag, start_script
from .config import UnicoreSystem


def runtime_seconds(minutes: int) -> int:
    return minutes * 60


def job_description(
    system: UnicoreSystem,
    options: dict[str, Any],
    *,
    lab_id: str,
    server_name: str,
    env: dict[str, str],
    prefix: str,
) -> dict[str, Any]:
    """The JSON UNICORE/X gets for a lab, from options the catalog has validated. Its
    ``Name`` is the lab's (``lablink-<server>``: what ``squeue`` shows); its tag
    ``lablink-<lab id>`` finds the job again."""
    partition = system.partitions[options["partition"]]
    desc: dict[str, Any] = {
        "Name": job_name(server_name),
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


def status_message(status: str, job: dict[str, Any], interactive: bool) -> str:
    """The sentence for the spawn page while the job is active."""
    batch_id = str(job.get("batchSystemID") or "")
    known = batch_id not in ("", "N/A")
    queue = job.get("queue") or "?"
    if status == "QUEUED":
        which = f" (batch job {batch_id})" if known else ""
        return f"Waiting in the queue of partition {queue}{which}."
    if status in ("RUNNING", "STAGINGOUT"):
        if interactive:
            return "The job runs on a login node; JupyterLab is starting."
        which = f"Batch job {batch_id}" if known else "The batch job"
        return f"{which} runs on partition {queue}; JupyterLab is starting."
    return "UNICORE accepted the job and prepares it."
