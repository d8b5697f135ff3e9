"""The UNICORE development site keeps its jobs across its own restart, as UNICORE/X
does: the site is killed (SIGKILL, as in a crash) and started again on the same
workdir, and pyunicore finds its jobs as they are (local processes and Slurm jobs)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devsite.description import parse_description
from devsite.jobs import Job
from devsite.table import job_from_record, job_record
from tests.helpers.devsite import (
    Devsite,
    local_pid,
    pid_alive,
    read,
    shell_job,
    wait_status,
)
from tests.helpers.slurm import SlurmCluster, squeue_ids

pytestmark = pytest.mark.unicore

ENDED = {"SUCCESSFUL", "FAILED"}


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.1)


def table_file(site: Devsite, job_id: str) -> Path:
    return site.workdir / "jobs" / f"{job_id}.json"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Devsite]:
    site = Devsite(workdir=tmp_path / "work", log=tmp_path / "devsite.log")
    site.start()
    yield site
    site.stop()  # a clean stop ends what a failed test left running


def test_a_job_record_holds_the_whole_job() -> None:
    spec = parse_description(
        {
            "Executable": "bash",
            "Arguments": ["start.sh", 1],
            "Environment": {"TOKEN": "s3cret"},
            "Imports": [{"To": "start.sh", "Data": "echo hi", "Permissions": "rwx------"}],
            "Resources": {"Runtime": "1h", "Nodes": 2, "Exotic": 1},
            "Tags": ["lab", "t1"],
        }
    )
    job = Job(
        id=str(uuid.uuid4()), owner="alice", dn="CN=alice", uid="alice", group=None,
        spec=spec, description={"Executable": "bash"}, directory=Path("/old/place/x"),
        runner="local", status="RUNNING", batch_id="INTERACTIVE_h_42", log=["created"],
        pid=42, pid_start_time=1234, started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )  # fmt: skip
    again = job_from_record(json.loads(json.dumps(job_record(job))), Path("/w"))
    assert again == Job(**{**job.__dict__, "directory": Path("/w") / job.id})
    assert again.spec.imports[0].permissions == 0o700 and again.spec.arguments == ("start.sh", "1")
    for broken in ({}, {**job_record(job), "id": "../../etc"}, {**job_record(job), "spec": {}}):
        with pytest.raises((KeyError, ValueError, TypeError)):
            job_from_record(broken, Path("/w"))


def test_a_running_job_survives_a_killed_site(site: Devsite) -> None:
    client = site.client()
    job = client.new_job(shell_job("echo before; sleep 300", Tags=["long"]))
    short = client.new_job(shell_job("sleep 2; echo done"))
    pid = local_pid(wait_status(job, {"RUNNING"}))
    wait_status(short, {"RUNNING"})
    wait_until("written", lambda: read(job.working_dir, "stdout") == "before\n")
    assert table_file(site, job.job_id).stat().st_mode & 0o777 == 0o600  # it holds secrets
    (site.workdir / "jobs" / f"{uuid.uuid4()}.json").write_text("{not json")

    site.restart(signal.SIGKILL)
    assert pid_alive(pid)  # the job's process did not go with the site

    props = wait_status(job, {"RUNNING"}, timeout=1)  # the same client, the same URLs
    assert local_pid(props) == pid
    assert any("again after a restart" in line for line in props["log"])
    assert [j.resource_url for j in client.get_jobs(tags=["long"])] == [job.resource_url]
    assert read(job.working_dir, "stdout") == "before\n"
    assert "stdout" in job.working_dir.listdir()
    assert "cannot be read and is left aside" in site.log_text()
    # the end of a followed process is noticed, with its exit code
    props = wait_status(short, ENDED, timeout=10)
    assert (props["status"], props["exitCode"]) == ("SUCCESSFUL", "0")
    assert read(short.working_dir, "stdout") == "done\n"

    job.abort()
    props = wait_status(job, ENDED, timeout=10)
    assert (props["status"], props["statusMessage"]) == ("FAILED", "Job aborted.")
    wait_until("ended", lambda: not pid_alive(pid), timeout=5)


def test_jobs_that_ended_while_the_site_was_down_have_their_exit_codes(site: Devsite) -> None:
    client = site.client()
    ok = client.new_job(shell_job("sleep 1; echo fine"))
    failing = client.new_job(shell_job("sleep 1; exit 3"))
    killed = client.new_job(shell_job("sleep 300"))
    pids = [local_pid(wait_status(job, {"RUNNING"})) for job in (ok, failing, killed)]
    site.stop(signal.SIGKILL)
    os.killpg(pids[2], signal.SIGKILL)  # ends with no exit code recorded
    wait_until("ended", lambda: not any(pid_alive(pid) for pid in pids))

    site.restart()
    props = wait_status(ok, ENDED, timeout=1)
    assert (props["status"], props["exitCode"]) == ("SUCCESSFUL", "0")
    assert read(ok.working_dir, "stdout") == "fine\n"
    props = wait_status(failing, ENDED, timeout=1)
    assert (props["status"], props["exitCode"]) == ("FAILED", "3")
    assert props["statusMessage"] == "User application exited with non-zero exit code: <3>."
    props = wait_status(killed, ENDED, timeout=1)
    assert props["status"] == "FAILED" and "exitCode" not in props
    assert "ended while the development site was down" in props["statusMessage"]


def test_a_clean_stop_still_ends_the_jobs_and_keeps_their_record(site: Devsite) -> None:
    job = site.client().new_job(shell_job("sleep 300"))
    pid = local_pid(wait_status(job, {"RUNNING"}))
    site.restart(signal.SIGTERM)
    assert not pid_alive(pid)
    props = wait_status(job, ENDED, timeout=1)
    assert (props["status"], props["statusMessage"]) == ("FAILED", "Job aborted.")
    job.delete()
    assert not table_file(site, job.job_id).exists()


# -- with Slurm ----------------------------------------------------------------------------


@pytest.mark.slurm
def test_a_slurm_job_survives_a_killed_site(slurm: SlurmCluster, tmp_path: Path) -> None:
    site = Devsite(workdir=tmp_path / "work", log=tmp_path / "devsite.log", site="SLURMSITE")
    site.start("--slurm", env=slurm.env)
    try:
        client = site.client()
        job = client.new_job(shell_job("echo before; sleep 300"))
        failing = client.new_job(shell_job("sleep 1; exit 3"))
        bss_id = wait_status(job, {"RUNNING"})["batchSystemID"]
        failing_id = wait_status(failing, {"RUNNING"})["batchSystemID"]
        site.stop(signal.SIGKILL)
        wait_until("ended in Slurm", lambda: failing_id not in squeue_ids(slurm))
        assert bss_id in squeue_ids(slurm)

        site.restart()
        props = wait_status(job, {"RUNNING"}, timeout=1)
        assert props["batchSystemID"] == bss_id
        props = wait_status(failing, ENDED, timeout=10)  # asked of Slurm, then its exit code
        assert (props["status"], props["exitCode"]) == ("FAILED", "3")
        wait_until("written", lambda: read(job.working_dir, "stdout") == "before\n")
        assert wait_status(job, {"RUNNING"})["status"] == "RUNNING"  # after some polls too

        job.abort()
        props = wait_status(job, ENDED, timeout=5)
        assert (props["status"], props["statusMessage"]) == ("FAILED", "Job aborted.")
        wait_until("cancelled", lambda: bss_id not in squeue_ids(slurm))
    finally:
        site.stop()
