"""The Slurm runner: BATCH jobs go through ``sbatch``, their states come from
``squeue``, an abort is a ``scancel``.

One ``squeue`` call per poll cycle covers all of the site's active Slurm jobs.
The batch script is the job's script (``description.job_script``), the one local
jobs run too. There is no accounting database to ask for exit codes, so that script
records its command's exit code in the job directory (``UNICORE_SCRIPT_EXIT_CODE``),
as UNICORE's TSI does. ``SLURM_CONF`` comes from the site's own environment.

The functions above ``SlurmRunner`` are pure and are tested as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .description import SCRIPT_NAME, JobSpec, job_script
from .jobs import Job, read_exit_code

log = logging.getLogger("lablink.devsite.slurm")

DEFAULT_JOB_NAME = "UnicoreJob"
# Slurm job states as UNICORE's TSI groups them (https://slurm.schedmd.com/squeue.html)
QUEUED_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD", "REQUEUED"}
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"})
SUSPENDED_STATES = frozenset({"PREEMPTED", "STOPPED", "SUSPENDED"})
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "REVOKED",
        "TIMEOUT",
    }
)
WHY_ENDED = {
    "TIMEOUT": "The job reached its wall time limit and was ended by Slurm (TIMEOUT).",
    "CANCELLED": "The job was cancelled in Slurm (CANCELLED).",
    "NODE_FAIL": "A node of the job failed (NODE_FAIL).",
    "BOOT_FAIL": "A node of the job failed to boot (BOOT_FAIL).",
    "OUT_OF_MEMORY": "The job ran out of memory and was ended by Slurm (OUT_OF_MEMORY).",
    "DEADLINE": "The job missed its deadline and was ended by Slurm (DEADLINE).",
    "REVOKED": "Slurm revoked the job (REVOKED).",
}
NO_EXIT_CODE = (
    "Job did not complete normally on BSS, please check standard error file "
    "and job log for more information."
)  # UNICORE's words


@dataclass(frozen=True)
class SlurmState:
    state: str
    partition: str
    reason: str


def slurm_status(state: str) -> str | None:
    """The UNICORE status for a Slurm job state: QUEUED, RUNNING or ENDED; None for
    a state that changes nothing (suspended), UNDEFINED for one nobody knows."""
    state = state.split()[0].rstrip("+") if state.strip() else ""
    if state in QUEUED_STATES:
        return "QUEUED"
    if state in RUNNING_STATES:
        return "RUNNING"
    if state in ENDED_STATES:
        return "ENDED"
    if state in SUSPENDED_STATES:
        return None
    return "UNDEFINED"


def ended_outcome(state: str, exit_code: int | None) -> str | None:
    """Why a job that Slurm reports in ``state`` failed, or None when its exit code
    decides (``Job.finish`` turns a non-zero exit code into FAILED)."""
    if state in WHY_ENDED:
        return WHY_ENDED[state]
    if exit_code is None:
        return NO_EXIT_CODE
    return None


def runtime_minutes(seconds: int) -> int:
    """Slurm's --time in minutes, rounded up (at least one)."""
    return max(1, math.ceil(seconds / 60))


def sbatch_argv(spec: JobSpec, directory: Path, script: Path) -> list[str]:
    """The sbatch command line for a job (no shell: every value is its own argument)."""
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={spec.name or DEFAULT_JOB_NAME}",
        f"--chdir={directory}",
        f"--output={directory / spec.stdout}",
        f"--error={directory / spec.stderr}",
    ]
    if spec.queue:
        argv.append(f"--partition={spec.queue}")
    if spec.nodes:
        argv.append(f"--nodes={spec.nodes}")
    if spec.runtime:
        argv.append(f"--time={runtime_minutes(spec.runtime)}")
    if spec.project:
        argv.append(f"--account={spec.project}")
    if spec.reservation:
        argv.append(f"--reservation={spec.reservation}")
    if spec.gpus:
        argv.append(f"--gres=gpu:{spec.gpus}")
    argv.append(str(script))
    return argv


def parse_sbatch_id(out: str) -> str:
    """The job id from ``sbatch --parsable`` ("123" or "123;cluster")."""
    first = out.strip().splitlines()[0] if out.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch answered {out.strip()!r}, not a job id")
    return job_id


def parse_squeue(out: str) -> dict[str, SlurmState]:
    """Lines of ``squeue -h -o %i|%T|%P|%r``, by job id."""
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0]:
            states[parts[0]] = SlurmState(parts[1], parts[2], parts[3])
    return states


def parse_partitions(out: str) -> tuple[list[str], str | None]:
    """Partitions from ``sinfo -h -o %P`` (the default one is marked with '*')."""
    names: list[str] = []
    default = None
    for line in out.split():
        name = line.rstrip("*")
        if line.endswith("*"):
            default = name
        if name and name not in names:
            names.append(name)
    return names, default or (names[0] if names else None)


def parse_scontrol(out: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (UNICORE's ``details``)."""
    details = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep:
            details[key] = value
    return details


def slurm_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What Slurm's commands (and, through sbatch, the jobs) get of the site's environment."""
    env = {k: environ[k] for k in ("PATH", "HOME", "LANG", "SLURM_CONF") if k in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


async def run(argv: list[str], env: Mapping[str, str], timeout: float = 30) -> tuple[int, str, str]:
    """Run a command; (exit code, stdout, stderr). A command that cannot run gives 127."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return 127, "", f"{argv[0]}: {exc.strerror or exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return 124, "", f"{argv[0]} did not answer within {timeout:g} seconds"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class SlurmRunner:
    """BATCH jobs on Slurm (see the runner contract in ``jobs``)."""

    def __init__(self, environ: Mapping[str, str], interval: float = 0.5) -> None:
        self.env = slurm_env(environ)
        self.interval = interval
        self._jobs: dict[str, Job] = {}  # by Slurm job id
        self._missing: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def partitions(self) -> tuple[list[str], str | None]:
        rc, out, err = await run(["sinfo", "-h", "-o", "%P"], self.env, timeout=10)
        if rc != 0:
            raise RuntimeError(err.strip() or f"sinfo failed with exit code {rc}")
        return parse_partitions(out)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def submit(self, job: Job) -> None:
        script = job.directory / SCRIPT_NAME
        text = job_script(job.spec, job.id, job.directory, job.login())
        await asyncio.to_thread(script.write_text, text)
        argv = sbatch_argv(job.spec, job.directory, script)
        job.note("Command is: " + shlex.join(argv))
        rc, out, err = await run(argv, self.env)
        if rc != 0:
            reason = " ".join(err.split()) or f"sbatch failed with exit code {rc}"
            job.note(f"Submission attempt failed: {reason}")
            job.finish(None, reason)
            return
        try:
            bss_id = parse_sbatch_id(out)
        except ValueError as exc:
            job.note(f"Submission attempt failed: {exc}")
            job.finish(None, f"The job's submission to Slurm failed: {exc}.")
            return
        job.batch_id = bss_id
        job.note(f"Submitted to Slurm with BSSID={bss_id}")
        self._jobs[bss_id] = job
        job.set_status("QUEUED")
        if job.aborted:  # the abort came while sbatch was running
            await self.abort(job)

    def follow(self, job: Job) -> None:
        """Take up a Slurm job submitted before the site's restart: the next poll asks
        squeue about it (and its exit code decides if Slurm has forgotten it)."""
        assert job.batch_id is not None
        job.note(f"Following Slurm job {job.batch_id} again after a restart of the site.")
        self._jobs[job.batch_id] = job

    async def abort(self, job: Job) -> None:
        bss_id = job.batch_id
        if bss_id is None or self._jobs.get(bss_id) is not job:
            return
        rc, _, err = await run(["scancel", bss_id], self.env)
        if rc != 0:
            # still tracked: the next poll shows what Slurm says; the job is not lost
            job.note(f"scancel {bss_id} failed: {' '.join(err.split())}")
            return
        job.note(f"Cancelled Slurm job {bss_id}.")
        self._untrack(bss_id)
        job.finish(None)

    async def wait(self, job: Job, timeout: float) -> None:
        return None  # abort ends a Slurm job at once

    async def details(self, job: Job) -> dict[str, str]:
        if job.batch_id is None:
            return {}
        rc, out, err = await run(["scontrol", "show", "job", "-o", job.batch_id], self.env)
        return parse_scontrol(out) if rc == 0 else {"rawDetailsData": err.strip()}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._jobs:
            ids = list(self._jobs)
            log.info("cancelling Slurm jobs %s", ", ".join(ids))
            rc, _, err = await run(["scancel", *ids], self.env)
            if rc != 0:
                log.warning("scancel failed: %s", err.strip())
            for job in list(self._jobs.values()):
                job.finish(None)
            self._jobs.clear()

    def _untrack(self, bss_id: str) -> None:
        self._jobs.pop(bss_id, None)
        self._missing.pop(bss_id, None)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._jobs:
                try:
                    await self.poll_once()
                except (OSError, ValueError) as exc:
                    log.warning("polling Slurm failed: %s", exc)

    async def poll_once(self) -> None:
        """One squeue call for every tracked job; update their statuses."""
        ids = list(self._jobs)
        if not ids:
            return
        argv = ["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%i|%T|%P|%r"]
        rc, out, err = await run(argv, self.env)
        if rc != 0 and "Invalid job id" not in err:
            log.warning("squeue failed (exit code %s): %s", rc, err.strip())
            return
        states = parse_squeue(out)
        for bss_id in ids:
            job = self._jobs.get(bss_id)
            if job is None:
                continue
            current = states.get(bss_id)
            if current is None:
                # gone from Slurm's memory (twice, to be sure): its exit code decides
                self._missing[bss_id] = self._missing.get(bss_id, 0) + 1
                if self._missing[bss_id] >= 2:
                    code = await asyncio.to_thread(read_exit_code, job.directory)
                    self._end(job, bss_id, "COMPLETED" if code == 0 else "FAILED", code)
                continue
            self._missing.pop(bss_id, None)
            if current.partition and current.partition != job.queue:
                job.queue = current.partition
                job.save()
            status = slurm_status(current.state)
            if status == "ENDED":
                code = await asyncio.to_thread(read_exit_code, job.directory)
                self._end(job, bss_id, current.state, code)
            elif status is not None and status != job.status:
                job.set_status(status)

    def _end(self, job: Job, bss_id: str, state: str, code: int | None) -> None:
        if self._jobs.get(bss_id) is not job:  # aborted while the exit code was read
            return
        self._untrack(bss_id)
        job.note(f"Job completed on BSS ({state}).")
        job.finish(code, ended_outcome(state, code))
