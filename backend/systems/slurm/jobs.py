"""Slurm batch jobs for labs, and what a job's JSON means for a lab (pure).

The job's script is the batch kinds' fixed start script with Slurm's hooks:

- the job starts in the system's ``job_directory``; the lab runs in the person's
  home, and keeps its files (``lab.json``, ``output.log``) in
  ``~/.lablink/labs/<lab id>``;
- the job is named after the lab (``lablink-<server>``, ``batch.script.job_name``),
  and its comment carries the lab's id (``{"lab": <id>, ...}``) from submission to
  end: that finds a lab's job again, whatever its name;
- slurmrestd has no file API, so the job tells the backend where the lab
  listens by putting ``lab.json`` in its own comment (``scontrol update
  JobId=$SLURM_JOB_ID Comment=...``, which a job's owner may do), and when it
  ends, its exit code and the end of its output (``{"exit", "tail"}``), each with
  the lab's id and at most 1000 bytes (Slurm keeps 1024).

Everything from a person or the hub travels in the job's ``environment``; the
script holds only the admin's text and Slurm's fixed lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...states import LabState
from ..batch.script import ScriptHooks, job_environment, job_name, job_tag, start_script
from .config import SlurmSystem

COMMENT_LIMIT = 1000

PROLOGUE = """\
# Slurm starts the job in job_directory with only the variables the backend sent
export HOME="${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}" USER="${USER:-$(id -un)}"
lab_dir="$HOME/.lablink/labs/$LABLINK_LAB_ID"
mkdir -p "$lab_dir"
exec > >(tee -a "$lab_dir/output.log") 2>&1
tee_pid=$!
lablink_end() {
  # the exit code and the end of the output, in the job's comment, for the backend
  exec >/dev/null 2>&1
  wait "$tee_pid" || true
  python3 - "$1" "$lab_dir/output.log" > "$lab_dir/end.json" <<'PY' || return 0
import json, os, sys
code, tail = int(sys.argv[1]), open(sys.argv[2], errors="replace").read()[-4000:]
lab = os.environ["LABLINK_LAB_ID"]
while len(json.dumps({"lab": lab, "exit": code, "tail": tail}).encode()) > 1000:
    tail = tail[len(tail) // 4 + 1 :]
print(json.dumps({"lab": lab, "exit": code, "tail": tail}))
PY
  scontrol update JobId="$SLURM_JOB_ID" Comment="$(cat "$lab_dir/end.json")" || true
}
trap 'lablink_end $?' EXIT"""

ANNOUNCE = """\
python3 - "$lab_dir/lab.json" > "$lab_dir/comment.json" <<'PY'
import json, os, sys
print(json.dumps({"lab": os.environ["LABLINK_LAB_ID"], **json.load(open(sys.argv[1]))}))
PY
scontrol update JobId="$SLURM_JOB_ID" Comment="$(cat "$lab_dir/comment.json")" \\
  || echo "lablink: scontrol could not put the lab's address in the job's comment" >&2"""

RUN = """\
set +e
{command}"""

HOOKS = ScriptHooks(prologue=PROLOGUE, lab_file='"$lab_dir/lab.json"', announce=ANNOUNCE, run=RUN)


def tag_comment(lab_id: str) -> str:
    """The comment a lab's job is submitted with: the lab's id, until the job writes
    its address (which keeps the id)."""
    return json.dumps({"lab": lab_id})


def job_script(system: SlurmSystem) -> str:
    """The script of every lab's job on ``system``."""
    return start_script(system, HOOKS)


def job_submission(
    system: SlurmSystem,
    options: dict[str, Any],
    *,
    lab_id: str,
    server_name: str,
    env: dict[str, str],
    prefix: str,
) -> dict[str, Any]:
    """The ``job`` of slurmrestd's submit request, from options the catalog has checked.
    The job's name is the lab's (``lablink-<server>``); its comment holds the lab's id
    (``tag_comment``), which finds the job again."""
    job: dict[str, Any] = {
        "name": job_name(server_name),
        "comment": tag_comment(lab_id),
        "partition": options["partition"],
        "nodes": [options["nodes"], options["nodes"]],
        "time_limit": options["runtime"],
        "current_working_directory": system.job_directory,
        "standard_output": f"{system.job_directory.rstrip('/')}/lablink-%u-%j.out",
        "environment": job_environment(system, env, lab_id=lab_id, prefix=prefix),
    }
    if options.get("project"):
        job["account"] = options["project"]
    if options.get("gpus"):
        job["gres"] = f"{system.gres}:{options['gpus']}"
    if options.get("reservation"):
        job["reservation"] = options["reservation"]
    return job


# -- what a job's JSON means ------------------------------------------------------------

ENDED = frozenset(
    {
        "COMPLETING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)
REASONS = {
    "TimeLimit": "its run time was up",
    "NonZeroExitCode": "",
    "None": "",
    "Resources": "waiting for free nodes",
    "Priority": "other jobs come first",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "PartitionNodeLimit": "more nodes than the partition has",
    "QOSMaxJobsPerUserLimit": "you have as many jobs as you may",
    "AssocMaxJobsLimit": "your account has as many jobs as it may",
    "BeginTime": "its start time has not come",
    "Dependency": "waiting for another job",
}


def job_state(job: dict[str, Any]) -> str:
    """``job_state`` (a string in v0.0.38, a list in later versions)."""
    state = job.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else ""
    return str(state or "UNKNOWN").upper()


def lab_state_for(state: str) -> LabState | None:
    """The lab state a starting lab is in while its job is in ``state`` (None: ended)."""
    if state in ENDED:
        return None
    if state in ("RUNNING", "CONFIGURING"):
        return LabState.STARTING
    if state in ("PENDING", "SUSPENDED", "STOPPED") or state.startswith("REQUEUE"):
        return LabState.QUEUED
    return LabState.SUBMITTED


def reason(job: dict[str, Any]) -> str:
    raw = str(job.get("state_reason") or "None")
    return REASONS.get(raw, raw)


def exit_code(job: dict[str, Any]) -> int | None:
    """The job's exit code from Slurm's raw wait status (exit 3: 768; a signal N: 128+N)."""
    raw = job.get("exit_code")
    if not isinstance(raw, int) or isinstance(raw, bool):
        return None
    signal = raw & 0x7F
    return 128 + signal if signal else (raw >> 8) & 0xFF


def status_message(state: str, job: dict[str, Any]) -> str:
    """The sentence for the spawn page while the job is active."""
    job_id = job.get("job_id", "?")
    partition = job.get("partition") or "?"
    why = reason(job)
    if state == "PENDING":
        return f"Waiting in the queue of partition {partition} (batch job {job_id}" + (
            f"; {why})." if why else ")."
        )
    if state == "CONFIGURING":
        return f"Batch job {job_id} has its nodes; they are being prepared."
    if state == "RUNNING":
        node = job.get("batch_host") or job.get("nodes") or "?"
        return f"Batch job {job_id} runs on {node}; JupyterLab is starting."
    if state in ("SUSPENDED", "STOPPED"):
        return f"Batch job {job_id} is suspended; it goes on when Slurm resumes it."
    if state.startswith("REQUEUE"):
        return f"Batch job {job_id} was put back in the queue of partition {partition}."
    return f"Slurm accepted batch job {job_id}."


def ended_reason(state: str, job: dict[str, Any]) -> str:
    why = reason(job)
    description = str(job.get("state_description") or "").strip()
    return description or why


@dataclass(frozen=True)
class Comment:
    """What the job's comment says: the lab's id, and the lab's address or how it ended."""

    lab: str | None = None
    address: bytes | None = None
    exit: int | None = None
    tail: str = ""


def finds(job: dict[str, Any], lab_id: str) -> bool:
    """Whether ``job`` (slurmrestd's JSON) is the lab's: its comment holds the lab's id,
    or (a job submitted before jobs were named after labs) its name is the lab's tag."""
    return parse_comment(job.get("comment")).lab == lab_id or job.get("name") == job_tag(lab_id)


def parse_comment(text: Any) -> Comment:
    """The job's comment (written by the job, so data to check, not to trust)."""
    if not isinstance(text, str) or not text.startswith("{") or len(text) > 1024:
        return Comment()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return Comment()
    if not isinstance(doc, dict):
        return Comment()
    lab = doc.get("lab") if isinstance(doc.get("lab"), str) else None
    if "host" in doc:
        return Comment(lab=lab, address=text.encode())
    code = doc.get("exit")
    tail = doc.get("tail")
    return Comment(
        lab=lab,
        exit=code if isinstance(code, int) and not isinstance(code, bool) else None,
        tail=tail if isinstance(tail, str) else "",
    )
