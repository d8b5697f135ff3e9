"""The one-node Slurm cluster from .ci/peers.sh runs and cancels real batch jobs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.slurm import SlurmCluster, squeue_ids

pytestmark = pytest.mark.slurm


def run(slurm: SlurmCluster, *args: str) -> str:
    result = subprocess.run(
        list(args), env=slurm.env, capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout.strip()


def sbatch(slurm: SlurmCluster, *args: str) -> str:
    """Submit a job, return its id."""
    return run(slurm, "sbatch", "--parsable", "--time=2", *args).split(";")[0]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate`` holds; return how long it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def job_field(slurm: SlurmCluster, job_id: str, field: str) -> str:
    """One field of ``scontrol show job`` (finished jobs stay there for MinJobAge)."""
    for word in run(slurm, "scontrol", "--oneliner", "show", "job", job_id).split():
        key, _, value = word.partition("=")
        if key == field:
            return value
    raise AssertionError(f"no {field} for job {job_id}")


def test_a_batch_job_runs_to_completion_and_writes_its_file(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    job_id = sbatch(
        slurm,
        "--partition=batch",
        "--job-name=peer-write",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/job.out",
        "--wrap",
        'echo "written by job $SLURM_JOB_ID on $SLURM_JOB_PARTITION" > result.txt',
    )
    try:
        wait_for(lambda: job_id not in squeue_ids(slurm), 10, f"job {job_id} to finish")
    finally:
        subprocess.run(["scancel", job_id], env=slurm.env, timeout=10, check=False)
    assert job_field(slurm, job_id, "JobState") == "COMPLETED"
    assert job_field(slurm, job_id, "ExitCode") == "0:0"
    result = tmp_path / "result.txt"
    assert result.read_text() == f"written by job {job_id} on batch\n"


def test_a_running_job_shows_in_squeue_and_scancel_ends_it(slurm: SlurmCluster) -> None:
    job_id = sbatch(slurm, "--job-name=peer-sleep", "--output=/dev/null", "--wrap", "sleep 300")
    try:
        state = ""

        def running() -> bool:
            nonlocal state
            state = run(slurm, "squeue", "--noheader", "--format=%T", f"--jobs={job_id}")
            return state == "RUNNING"

        wait_for(running, 10, f"job {job_id} to run (last state: {state!r})")
        assert job_id in squeue_ids(slurm)
        run(slurm, "scancel", job_id)
        took = wait_for(lambda: job_id not in squeue_ids(slurm), 5, f"job {job_id} to go")
    finally:
        subprocess.run(["scancel", job_id], env=slurm.env, timeout=10, check=False)
    assert took < 5
    assert job_field(slurm, job_id, "JobState") == "CANCELLED"
