"""The UNICORE development site (``lablink unicore-devsite``), driven by the official
client pyunicore (sync and async) and by plain HTTP; with Slurm for the BATCH jobs
in the tests marked ``slurm``."""

from __future__ import annotations

import ast
import importlib.util
import os
import pwd
import re
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyunicore import client as unicore
from pyunicore.aio import client as unicore_aio

from backend.cli import build_parser
from backend.cli import main as lablink
from devsite import parse_token, parse_user
from devsite.cli import make_app
from devsite.description import DescriptionError, job_script, parse_description, parse_runtime
from devsite.slurm import (
    ended_outcome,
    parse_partitions,
    parse_sbatch_id,
    parse_squeue,
    runtime_minutes,
    sbatch_argv,
    slurm_status,
)
from devsite.storage import RangeError, parse_range
from tests.helpers.devsite import (
    Devsite,
    local_pid,
    pid_alive,
    read,
    shell_job,
    wait_status,
    wait_status_async,
)
from tests.helpers.slurm import SlurmCluster, squeue_ids

pytestmark = pytest.mark.unicore

UNICORE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")


@pytest.fixture(scope="module")
def devsite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devsite]:
    base = tmp_path_factory.mktemp("devsite")
    site = Devsite(workdir=base / "work", log=base / "devsite.log")
    site.start()
    yield site
    site.stop()


# jobs whose Executable and Arguments a shell reads, as UNICORE's TSI runs them
START_SH = 'echo "started with $# arguments: $*"; echo "secret=$SECRET"\n'
AS_UNICORE_DOES = [
    ({"Executable": "echo $VAR", "Environment": {"VAR": "x"}}, "x\n"),
    ({"Executable": "echo", "Arguments": ["a   b", "$VAR", "'c  d'"], "Environment": ["VAR=x"]},
     "a b x c  d\n"),
    ({"Executable": "bash", "Arguments": ["start.sh", "one"], "Environment": {"SECRET": "$(id)"},
      "Imports": [{"To": "start.sh", "Data": START_SH}]},
     "started with 1 arguments: one\nsecret=$(id)\n"),
    ({"Executable": "printf '%s|' \"$A\" > out; cat out", "Environment": {"A": "'; touch x; '"}},
     "'; touch x; '|"),
    ({"Executable": "pwd -P; ls", "Arguments": ["in*"], "Imports": [{"To": "in.txt", "Data": ""}]},
     None),  # None: the job directory, then in.txt
]  # fmt: skip


# -- the package --------------------------------------------------------------------


def test_devsite_is_a_package_of_its_own_that_uses_only_pure_parts_of_the_backend() -> None:
    spec = importlib.util.find_spec("devsite")  # the name `devsite` is a fixture here
    assert spec is not None and spec.origin is not None
    package = Path(spec.origin).parent
    assert package.name == "devsite" and package.parent.name != "backend"
    imported = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{source.name} imports from outside devsite relatively"
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    of_backend = {m for m in imported if m == "backend" or m.startswith("backend.")}
    assert of_backend == {"backend.vos", "backend.procs", "backend.bounded"}


# -- pure functions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600), ("3600", 3600), ("60min", 3600), ("1h", 3600), ("2d", 172800),
     ("90 s", 90), ("5m", 300), ("3 hours", 10800), (120.0, 120)],
)  # fmt: skip
def test_runtime_is_parsed_as_unicore_does(value: object, seconds: int) -> None:
    assert parse_runtime(value) == seconds


@pytest.mark.parametrize("value", ["1.5h", "10 parsecs", "", "-5", 0, True, [60], "1H"])
def test_runtime_that_unicore_refuses_is_refused(value: object) -> None:
    with pytest.raises(DescriptionError, match="Runtime"):
        parse_runtime(value)


def test_sbatch_argv_is_built_from_the_description() -> None:
    spec = parse_description(
        {
            "Executable": "/bin/true",
            "Name": "lab one",
            "Project": "training2026",
            "Resources": {"Queue": "devel", "Nodes": "2", "Runtime": "61", "GPUS": 2,
                          "Reservation": "workshop"},
        }
    )  # fmt: skip
    argv = sbatch_argv(spec, Path("/w/j1"), Path("/w/j1/job.sh"))
    assert argv == [
        "sbatch", "--parsable", "--job-name=lab one", "--chdir=/w/j1",
        "--output=/w/j1/stdout", "--error=/w/j1/stderr", "--partition=devel", "--nodes=2",
        "--time=2", "--account=training2026", "--reservation=workshop", "--gres=gpu:2",
        "/w/j1/job.sh",
    ]  # fmt: skip
    minimal = sbatch_argv(parse_description({"Executable": "x"}), Path("/w"), Path("/w/s"))
    assert minimal == [
        "sbatch", "--parsable", "--job-name=UnicoreJob", "--chdir=/w", "--output=/w/stdout",
        "--error=/w/stderr", "/w/s",
    ]  # fmt: skip
    no_gpus = parse_description({"Executable": "x", "Resources": {"GPUS": "0"}})
    assert not any(a.startswith("--gres") for a in sbatch_argv(no_gpus, Path("/w"), Path("/s")))
    assert [runtime_minutes(s) for s in (1, 60, 61, 3600)] == [1, 1, 2, 60]


def test_job_script_is_unicores_one_line_after_the_quoted_environment() -> None:
    spec = parse_description(
        {
            "Executable": "echo",
            "Arguments": ["$HOME", "a b", "'; rm -rf /"],
            "Environment": ["GREETING=$(id)", "EMPTY="],
        }
    )
    script = job_script(spec, "job-1", Path("/w/it's here"))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[2] == """cd '/w/it'"'"'s here' || exit 1"""
    assert lines[3:5] == ["export GREETING='$(id)'", "export EMPTY=''"]
    assert lines[5] == "echo $HOME a b '; rm -rf /"  # as UNICORE: a shell reads the line
    assert lines[6:] == [
        "code=$?", """echo "$code" > '/w/it'"'"'s here/UNICORE_SCRIPT_EXIT_CODE'""",
        'exit "$code"',
    ]  # fmt: skip
    with pytest.raises(DescriptionError, match="variable name"):
        job_script(replace(spec, environment={"A;B": "x"}), "job-1", Path("/w"))
    # the uid's login (HOME, SHELL) comes first, so the job's Environment may change it
    login = {"HOME": "/w/homes/it's", "SHELL": "/bin/bash"}
    lines = job_script(spec, "job-1", Path("/w"), login).splitlines()
    assert lines[3:7] == [
        """export HOME='/w/homes/it'"'"'s'""", "export SHELL=/bin/bash",
        "export GREETING='$(id)'", "export EMPTY=''",
    ]  # fmt: skip


def test_slurm_states_map_to_unicore_states() -> None:
    assert slurm_status("PENDING") == "QUEUED"
    assert slurm_status("CONFIGURING") == "QUEUED"  # as UNICORE's TSI: nodes not ready yet
    assert slurm_status("RUNNING") == slurm_status("COMPLETING") == "RUNNING"
    for state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
        assert slurm_status(state) == "ENDED"
    assert slurm_status("SUSPENDED") is None
    assert slurm_status("SOMETHING_NEW") == "UNDEFINED"
    assert ended_outcome("COMPLETED", 0) is None
    assert ended_outcome("FAILED", 3) is None  # the exit code speaks (Job.finish)
    assert "wall time" in str(ended_outcome("TIMEOUT", None))
    assert "OUT_OF_MEMORY" in str(ended_outcome("OUT_OF_MEMORY", 137))
    assert "did not complete normally" in str(ended_outcome("FAILED", None))


def test_slurm_answers_are_parsed() -> None:
    assert parse_sbatch_id("42\n") == parse_sbatch_id("42;lablink\n") == "42"
    with pytest.raises(ValueError):
        parse_sbatch_id("sbatch: error")
    states = parse_squeue("26|RUNNING|batch|None\n27|PENDING|devel|Resources\n\n")
    assert states["26"].state == "RUNNING" and states["27"].partition == "devel"
    assert parse_partitions("batch*\ndevel\n") == (["batch", "devel"], "batch")


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [("bytes=0-4", 10, (0, 4)), ("bytes=5-", 10, (5, 9)), ("bytes=-3", 10, (7, 9)),
     ("bytes=8-100", 10, (8, 9)), ("bytes=-30", 10, (0, 9))],
)  # fmt: skip
def test_range_headers(header: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=5-2", "items=0-1", "bytes=0-1,4-5",
                                    "bytes=-0", "bytes=a-b", "bytes=-"])  # fmt: skip
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeError):
        parse_range(header, 10)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ({}, "Executable"),
        ({"Executable": "x", "Arguments": "-l"}, "Arguments must be a list"),
        ({"Executable": "x", "Environment": "A=1"}, "Environment"),
        ({"Executable": "x", "Environment": ["1A=2"]}, "invalid variable name '1A'"),
        ({"Executable": "x", "Imports": [{"To": "../x", "Data": "d"}]}, "inside the job"),
        ({"Executable": "x", "Imports": [{"To": "/etc/x", "Data": "d"}]}, "relative"),
        ({"Executable": "x", "Imports": [{"From": "https://e.org/f", "To": "f"}]}, "inline"),
        ({"Executable": "x", "Resources": {"Nodes": 0}}, "Resources.Nodes"),
        ({"Executable": "x", "Resources": {"Queue": 3}}, "Resources.Queue"),
        ({"Executable": "x", "Tags": [1]}, "Tags"),
        ({"Executable": "x", "Job type": "RAW"}, "Job type 'RAW'"),
        ({"Executable": "x", "haveClientStageIn": "yes"}, "haveClientStageIn"),
    ],
)
def test_bad_descriptions_name_the_key(description: dict[str, Any], message: str) -> None:
    with pytest.raises(DescriptionError, match=re.escape(message)):
        parse_description(description)


def test_descriptions_as_unicore_accepts_them() -> None:
    spec = parse_description(
        {
            "Executable": "run",
            "Arguments": ["-n", 4],
            "Environment": {"A": 1, "B": "x"},
            "Imports": [{"To": "d/in", "Data": ["l1", "l2\n"]}, {"From": "inline://x",
                                                                 "To": "s", "Data": "raw"}],
            "Job type": "interactive",
            "haveClientStageIn": "true",
            "Tags": "a,b",
            "Unknown key": {"is": "ignored"},
        }
    )  # fmt: skip
    assert spec.arguments == ("-n", "4")
    assert spec.environment == {"A": "1", "B": "x"}
    assert [(i.to, i.data) for i in spec.imports] == [("d/in", "l1\nl2\n"), ("s", "raw")]
    assert spec.job_type == "ON_LOGIN_NODE" and spec.client_stage_in
    assert spec.tags == ("a", "b")


def test_user_and_token_arguments_take_secrets_from_the_environment_only() -> None:
    env = {"PW": "from-env", "TOK": "t0ken"}
    assert parse_user("demo:env:PW", env).uids == ("demo",)
    user = parse_user("demo:env:PW:demo,other", env)
    assert (user.password, user.uids) == ("from-env", ("demo", "other"))
    assert parse_token("TOK:demo", env) == ("t0ken", "demo")
    for bad in ("demo", "demo:", "demo:env:MISSING", "demo:env:PW:Bad-Uid", "de mo:env:PW"):
        with pytest.raises(ValueError):
            parse_user(bad, env)
    # a password on the command line is readable by everybody (ps): refused
    with pytest.raises(ValueError, match="env:VAR"):
        parse_user("demo:secret", env)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "at least one --user"),
        (["--user", "demo"], "NAME:env:VAR"),
        (["--user", "demo:pw"], "env:VAR"),
        (["--user", "demo:env:LABLINK_NOT_SET_ANYWHERE"], "LABLINK_NOT_SET_ANYWHERE"),
        (["--user", "a:env:HOME", "--user", "a:env:HOME"], "given twice"),
        (["--user", "a:env:HOME", "--site", "no/slash"], "site name"),
        (["--user", "a:env:HOME", "--userinfo-cache", "-1"], "--userinfo-cache -1"),
        (["--user", "a:env:HOME", "--userinfo-cache", "nan"], "--userinfo-cache nan"),
    ],
)
def test_bad_command_lines_exit_2_with_one_sentence(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lablink(["unicore-devsite", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


# -- the site, driven by pyunicore -------------------------------------------------------


def test_base_properties(devsite: Devsite) -> None:
    client = devsite.client()
    info = client.access_info()
    assert info["xlogin"]["UID"] == "alice"
    assert info["xlogin"]["availableUIDs"] == ["alice", "alice2"]
    assert info["role"] == {"selected": "user", "availableRoles": ["user"]}
    assert info["queues"] == {"selected": "local", "availableQueues": ["local"]}
    assert client.server_version_info() >= (10, 0, 0)
    assert set(client.links) >= {"jobs", "storages", "factories", "sites"}
    [compute] = client.get_compute()
    assert "local" in compute.get_queues()


def test_job_with_inline_import_and_environment(devsite: Devsite) -> None:
    job = devsite.client().new_job(
        shell_job(
            'echo "hello $GREETING"; cat input.txt; test -z "$DEVSITE_PW_ALICE" && echo clean',
            Environment={"GREETING": "world"},
            Imports=[{"From": "inline://dummy", "To": "input.txt", "Data": "line one\n"}],
            Name="greeting",
        )
    )
    props = wait_status(job, {"SUCCESSFUL", "FAILED"})
    assert props["status"] == "SUCCESSFUL", props
    assert job.exit_code == 0 and props["exitCode"] == "0"
    assert props["name"] == "greeting" and props["queue"] == "local"
    assert UNICORE_TIME.match(props["submissionTime"])
    assert UNICORE_TIME.match(props["terminationTime"])
    assert any("Exit code 0" in line for line in job.log)
    assert read(job.working_dir, "stdout") == "hello world\nline one\nclean\n"
    assert job.working_dir.links["job"] == job.resource_url


@pytest.mark.parametrize(("description", "stdout"), AS_UNICORE_DOES)
def test_executable_and_arguments_run_as_unicores_tsi_runs_them(
    devsite: Devsite, description: dict[str, Any], stdout: str | None
) -> None:
    job = devsite.client().new_job(description)
    props = wait_status(job, {"SUCCESSFUL", "FAILED"})
    stderr = read(job.working_dir, "stderr")
    assert (props["status"], props["exitCode"], stderr) == ("SUCCESSFUL", "0", "")
    expected = stdout or f"{(devsite.workdir / job.job_id).resolve()}\nin.txt\n"
    assert read(job.working_dir, "stdout") == expected
    assert "x" not in job.working_dir.listdir()  # no value of Environment ran


# writes into the home what the job saw, then lists the home (a notebook of an earlier job)
IN_THE_HOME = (
    'cd "$HOME" && printf "%s|%s|%s" "$HOME" "$SHELL" "$(id -un)" > "seen-$N";'
    " ls; touch notebook.ipynb"
)


def home_jobs(site: Devsite, preferences: str = "", **extra: Any) -> tuple[Path, str]:
    """Two jobs of alice one after the other (with ``preferences``): her home on the
    site, and what the second job listed in it."""
    client = site.client()
    if preferences:
        client.transport.preferences = preferences
    uid = client.access_info()["xlogin"]["UID"]
    home = (site.workdir / "homes" / uid).resolve()
    (home / "notebook.ipynb").unlink(missing_ok=True)
    listing = ""
    for n in (1, 2):
        job = client.new_job(shell_job(IN_THE_HOME, Environment={"N": str(n)}, **extra))
        props = wait_status(job, {"SUCCESSFUL", "FAILED"}, timeout=30)
        assert props["status"] == "SUCCESSFUL", (props, read(job.working_dir, "stderr"))
        listing = read(job.working_dir, "stdout")
        assert "notebook.ipynb" not in job.working_dir.listdir()  # the job dir: the job's
    return home, listing


def test_each_uid_has_a_home_that_its_jobs_share(devsite: Devsite) -> None:
    home, listing = home_jobs(devsite)
    assert home.is_dir() and stat.S_IMODE(home.stat().st_mode) == 0o700
    assert "notebook.ipynb" in listing.split()  # the first job's file, seen by the second
    site_user = pwd.getpwuid(os.getuid())
    assert (home / "seen-2").read_text() == f"{home}|{site_user.pw_shell}|{site_user.pw_name}"
    other, _ = home_jobs(devsite, "uid:alice2")
    assert other == home.parent / "alice2" and (other / "seen-1").exists()
    assert not (home / "seen-1").read_text().startswith(str(other))


def test_an_executable_that_is_not_there_fails_with_127(devsite: Devsite) -> None:
    job = devsite.client().new_job({"Executable": "no-such-program", "Arguments": ["--help"]})
    props = wait_status(job, {"SUCCESSFUL", "FAILED"})
    assert (props["status"], props["exitCode"]) == ("FAILED", "127")
    assert "no-such-program: command not found" in read(job.working_dir, "stderr")


def test_client_stage_in_uploads_then_starts(devsite: Devsite, tmp_path: Path) -> None:
    data = tmp_path / "numbers.txt"
    data.write_text("1\n2\n3\n")
    client = devsite.client()
    held = client.new_job(shell_job("true"), autostart=False, inputs=[str(data)])
    assert wait_status(held, {"READY"})["status"] == "READY"
    held.delete()
    job = client.new_job(shell_job("wc -l < numbers.txt"), inputs=[str(data)])
    assert wait_status(job, {"SUCCESSFUL", "FAILED"})["status"] == "SUCCESSFUL"
    assert read(job.working_dir, "stdout").strip() == "3"


def test_abort_ends_a_long_job_and_its_process(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("sleep 300 & sleep 300; wait"))
    pid = local_pid(wait_status(job, {"RUNNING"}))
    assert pid_alive(pid)
    started = time.monotonic()
    job.abort()
    props = wait_status(job, {"SUCCESSFUL", "FAILED"}, timeout=10)
    assert time.monotonic() - started < 5
    assert (props["status"], props["statusMessage"]) == ("FAILED", "Job aborted.")
    assert not pid_alive(pid)
    job.abort()  # aborting a finished job is fine


def test_runtime_is_enforced_for_local_jobs(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("sleep 60", Resources={"Runtime": "1sec"}))
    props = wait_status(job, {"SUCCESSFUL", "FAILED"}, timeout=10)
    assert props["status"] == "FAILED" and "runtime of 1 seconds" in props["statusMessage"]


def test_failing_job_has_its_exit_code(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("echo oops >&2; exit 3"))
    props = wait_status(job, {"SUCCESSFUL", "FAILED"})
    assert (props["status"], props["exitCode"]) == ("FAILED", "3")
    assert "<3>" in props["statusMessage"]
    assert read(job.working_dir, "stderr") == "oops\n"


def test_delete_removes_job_and_directory(devsite: Devsite) -> None:
    client = devsite.client()
    job = client.new_job(shell_job("sleep 300"))
    pid = local_pid(wait_status(job, {"RUNNING"}))
    directory = devsite.workdir / job.job_id
    assert directory.is_dir()
    job.delete()
    assert not directory.exists() and not pid_alive(pid)
    with devsite.http() as http:
        response = http.get(f"/jobs/{job.job_id}")
    assert response.status_code == 404
    assert response.json() == {
        "errorMessage": f"There is no job {job.job_id} here.",
        "status": 404,
    }
    assert job.resource_url not in [j.resource_url for j in client.get_jobs()]


def test_restart_runs_a_finished_job_again(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("echo run >> runs.txt"))
    wait_status(job, {"SUCCESSFUL"})
    job.restart()
    time.sleep(0.3)
    wait_status(job, {"SUCCESSFUL"})
    assert read(job.working_dir, "runs.txt") == "run\nrun\n"


def test_ranges_listing_and_uploads(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("printf 0123456789 > digits; mkdir -p sub/deep"))
    wait_status(job, {"SUCCESSFUL"})
    wd = job.working_dir
    digits = wd.stat("digits")
    assert digits.isfile() and digits.size() == 10
    assert digits.read(offset=2, size=3) == b"234"
    assert digits.read(offset=7) == b"789"
    with devsite.http() as http:
        files = f"/storages/{job.job_id}-uspace/files"
        tail = http.get(f"{files}/digits", headers={"Range": "bytes=-4"})
        assert (tail.status_code, tail.content) == (206, b"6789")
        assert tail.headers["Content-Range"] == "bytes 6-9/10"
        beyond = http.get(f"{files}/digits", headers={"Range": "bytes=20-"})
        assert beyond.status_code == 416 and beyond.json()["status"] == 416
        assert beyond.headers["Content-Range"] == "bytes */10"
        stat = http.get(f"{files}/digits", headers={"Accept": "application/json"}).json()
        assert stat["isDirectory"] is False and stat["size"] == 10
        assert UNICORE_TIME.match(stat["lastAccessed"]) and stat["permissions"].startswith("rw")
        up = http.put(f"{files}/new/dir/file.txt", content=b"uploaded",
                      headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert up.status_code == 204
        assert http.get(f"{files}/../x").status_code in (400, 404)
        assert http.get(f"{files}/sub/%2E%2E/%2E%2E/x").status_code == 400
    listing = wd.listdir()
    assert {"digits", "stdout", "stderr", "sub/", "new/"} <= set(listing)
    assert listing["sub/"].isdir() and listing["digits"].isfile()
    root = wd.contents()
    assert root["isDirectory"] is True and "/digits" in root["children"]
    assert root["content"]["/sub/"]["isDirectory"] is True
    assert read(wd, "new/dir/file.txt") == "uploaded"
    assert set(wd.listdir("sub")) == {"sub/deep/"}


def test_symlinks_out_of_the_job_directory_are_refused(devsite: Devsite, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("not yours")
    job = devsite.client().new_job(shell_job(f"ln -s {tmp_path}/secret leak; ln -s {tmp_path} d"))
    wait_status(job, {"SUCCESSFUL"})
    with devsite.http() as http:
        files = f"/storages/{job.job_id}-uspace/files"
        assert http.get(f"{files}/leak").status_code == 403
        assert http.put(f"{files}/d/new", content=b"x").status_code == 403
        stat = http.get(f"{files}/leak", headers={"Accept": "application/json"}).json()
        assert stat["errorMessage"].endswith("points outside the job's working directory.")
        assert http.delete(f"{files}/d/secret").status_code == 403
        assert http.delete(f"{files}/leak").status_code == 204  # the link, not its target
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "secret").read_text() == "not yours"


def test_directories_copy_rename_and_delete(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("echo data > a.txt"))
    wait_status(job, {"SUCCESSFUL"})
    wd = job.working_dir
    wd.mkdir("results/run1")
    wd.copy("a.txt", "results/run1/b.txt")
    wd.rename("a.txt", "c.txt")
    assert read(wd, "results/run1/b.txt") == read(wd, "c.txt") == "data\n"
    assert "a.txt" not in wd.listdir()
    wd.rm("c.txt")
    wd.rmdir("results")
    assert not {"c.txt", "results/"} & set(wd.listdir())
    with devsite.http() as http:
        r = http.delete(f"/storages/{job.job_id}-uspace/files/c.txt")
        assert r.status_code == 404 and r.json()["status"] == 404


def test_errors_are_json_sentences(devsite: Devsite) -> None:
    with devsite.http(None) as anonymous:
        r = anonymous.get("/")
        assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
        assert r.json()["status"] == 401
        r = anonymous.get("/", auth=("alice", "wrong"))
        assert r.status_code == 401 and r.json()["errorMessage"].endswith("not valid.")
        r = anonymous.get("/", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    with devsite.http() as http:
        r = http.get("/jobs/no-such-job")
        assert r.status_code == 404
        assert r.json()["errorMessage"] == "There is no job no-such-job here."
        assert http.get("/nothing/here").json()["status"] == 404
        r = http.patch("/jobs")
        assert r.status_code == 405 and "PATCH" in r.json()["errorMessage"]
        r = http.get("/jobs", params={"num": "many"})
        assert r.status_code == 400 and "num" in r.json()["errorMessage"]
        r = http.post("/jobs", json={"Executable": "x", "Arguments": "-l"})
        assert r.json() == {"errorMessage": "Arguments must be a list of strings.", "status": 400}
        r = http.post("/jobs", json={"Executable": "x", "Imports": [{"To": "../up", "Data": ""}]})
        assert r.status_code == 400 and "Imports[0].To" in r.json()["errorMessage"]
        r = http.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["errorMessage"]
        r = http.post("/jobs/x/actions/abort")
        assert r.status_code == 404
    with pytest.raises(httpx.HTTPError, match="401"):
        unicore.Client(devsite.credential("bob").__class__("bob", "wrong"), devsite.url)


def test_other_users_do_not_see_a_job(devsite: Devsite) -> None:
    job = devsite.client().new_job(shell_job("true"))
    wait_status(job, {"SUCCESSFUL"})
    with devsite.http("bob") as bob:
        assert bob.get(f"/jobs/{job.job_id}").status_code == 404
        assert bob.get(f"/storages/{job.job_id}-uspace/files/stdout").status_code == 404
        assert bob.post(f"/jobs/{job.job_id}/actions/abort").status_code == 404
        assert bob.delete(f"/jobs/{job.job_id}").status_code == 404
        assert job.resource_url not in bob.get("/jobs").json()["jobs"]
    # alice's token sees alice's jobs
    by_token = unicore.Client(devsite.token_credential(), devsite.url)
    assert job.resource_url in [j.resource_url for j in by_token.get_jobs()]
    assert by_token.access_info()["authenticationMethod"] == "OAUTH"


def test_uid_preference(devsite: Devsite) -> None:
    client = devsite.client()
    client.transport.preferences = "uid:alice2,group:lab"
    assert client.access_info()["xlogin"]["UID"] == "alice2"
    job = client.new_job(shell_job("true"))
    assert wait_status(job, {"SUCCESSFUL"})["submissionPreferences"] == {
        "uid": ["alice2"],
        "group": ["lab"],
    }
    with devsite.http() as http:
        r = http.get("/", headers={"X-UNICORE-User-Preferences": "uid:bob"})
        assert r.status_code == 403 and "'bob'" in r.json()["errorMessage"]


def test_jobs_filtered_by_tags_and_paged(devsite: Devsite) -> None:
    client = devsite.client("bob")
    tagged = client.new_job(shell_job("true", Tags=["lab", "t1"]))
    other = client.new_job(shell_job("true", Tags=["lab"]))
    urls = lambda **q: [j.resource_url for j in client.get_jobs(**q)]  # noqa: E731
    assert urls(tags=["lab", "t1"]) == [tagged.resource_url]
    assert set(urls(tags=["lab"])) == {tagged.resource_url, other.resource_url}
    assert urls(tags=["nope"]) == []
    with devsite.http("bob") as http:
        page = http.get("/jobs", params={"offset": 1, "num": 1}).json()
        assert len(page["jobs"]) == 1 and "previous" in page["_links"]


async def test_async_client_runs_a_job(devsite: Devsite) -> None:
    async with unicore_aio.Client(devsite.credential(), devsite.url) as client:
        await client.assert_authentication()
        assert (await client.access_info)["xlogin"]["UID"] == "alice"
        job = await client.new_job(shell_job("echo async; exit 0", Tags=["aio"]))
        props = await wait_status_async(job, {"SUCCESSFUL", "FAILED"})
        assert props["status"] == "SUCCESSFUL" and await job.exit_code == 0
        wd = await job.working_dir
        stdout = await wd.stat("stdout")
        assert await stdout.read() == b"async\n"
        assert await stdout.read(offset=1, size=3) == b"syn"
        long = await client.new_job(shell_job("sleep 300"))
        pid = local_pid(await wait_status_async(long, {"RUNNING"}))
        await long.abort()
        assert (await wait_status_async(long, {"FAILED"}, 10))["statusMessage"] == "Job aborted."
        assert not pid_alive(pid)


def test_shutdown_ends_local_jobs(tmp_path: Path) -> None:
    site = Devsite(workdir=tmp_path / "work", log=tmp_path / "devsite.log")
    site.start()
    try:
        job = site.client().new_job(shell_job("sleep 300"))
        pid = local_pid(wait_status(job, {"RUNNING"}))
    finally:
        # uvicorn shuts down, then ends itself with the signal it caught
        assert site.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in site.log_text()
    assert not pid_alive(pid)
    log = site.log_text(10**6)
    assert site.passwords["alice"] not in log and site.token not in log


# -- with Slurm ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_devsite(
    slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Devsite]:
    base = tmp_path_factory.mktemp("slurm-devsite")
    site = Devsite(workdir=base / "work", log=base / "devsite.log", site="SLURMSITE")
    site.start("--slurm", env=slurm.env)
    yield site
    site.stop()


def wait_gone(slurm: SlurmCluster, bss_id: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while bss_id in squeue_ids(slurm):
        assert time.monotonic() < deadline, f"Slurm job {bss_id} is still in squeue"
        time.sleep(0.2)


@pytest.mark.slurm
def test_slurm_batch_jobs_run_through_sbatch(slurm_devsite: Devsite, slurm: SlurmCluster) -> None:
    client = slurm_devsite.client()
    assert client.access_info()["queues"] == {
        "selected": "batch",
        "availableQueues": ["batch", "devel"],
    }
    job = client.new_job(
        shell_job(
            'echo "hello $GREETING"; cat in.txt; sleep 1',
            Environment={"GREETING": "slurm"},
            Imports=[{"To": "in.txt", "Data": ["from an import"]}],
            Resources={"Runtime": "5min", "GPUS": 1},
            Name="devsite-test",
        )
    )
    failing = client.new_job(shell_job("exit 3", Resources={"Queue": "devel"}))
    props = wait_status(job, {"RUNNING", "SUCCESSFUL", "FAILED"})
    assert props["status"] == "RUNNING", props
    assert props["batchSystemID"] in squeue_ids(slurm)
    assert "gpu" in str(job.bss_details())
    props = wait_status(job, {"SUCCESSFUL", "FAILED"})
    assert (props["status"], props["exitCode"], props["queue"]) == ("SUCCESSFUL", "0", "batch")
    assert any("Command is: sbatch --parsable --job-name=devsite-test" in line for line in job.log)
    assert read(job.working_dir, "stdout") == "hello slurm\nfrom an import\n"
    props = wait_status(failing, {"SUCCESSFUL", "FAILED"})
    assert (props["status"], props["exitCode"], props["queue"]) == ("FAILED", "3", "devel")


@pytest.mark.slurm
def test_slurm_batch_scripts_run_executable_and_arguments_as_unicore_does(
    slurm_devsite: Devsite,
) -> None:
    client = slurm_devsite.client()
    jobs = [(client.new_job(d), stdout) for d, stdout in AS_UNICORE_DOES]
    for job, stdout in jobs:
        props = wait_status(job, {"SUCCESSFUL", "FAILED"})
        assert (props["status"], props["exitCode"]) == ("SUCCESSFUL", "0"), props
        assert props["batchSystemID"].isdigit()  # through sbatch
        expected = stdout or f"{(slurm_devsite.workdir / job.job_id).resolve()}\nin.txt\n"
        assert read(job.working_dir, "stdout") == expected
        assert "x" not in job.working_dir.listdir()


@pytest.mark.slurm
def test_slurm_jobs_have_the_uids_home_too(slurm_devsite: Devsite, slurm: SlurmCluster) -> None:
    """sbatch runs as the site's Unix user, whose home all uids would share: the jobs
    get the uid's home on the site, as local jobs do."""
    home, listing = home_jobs(slurm_devsite, Name="lablink-home")
    assert "notebook.ipynb" in listing.split()
    assert (home / "seen-2").read_text().startswith(f"{home}|")


@pytest.mark.slurm
def test_slurm_abort_cancels_the_job(slurm_devsite: Devsite, slurm: SlurmCluster) -> None:
    job = slurm_devsite.client().new_job(shell_job("sleep 300"))
    props = wait_status(job, {"RUNNING"})
    assert props["batchSystemID"] in squeue_ids(slurm)
    job.abort()
    props = wait_status(job, {"FAILED"}, timeout=5)
    assert props["statusMessage"] == "Job aborted."
    wait_gone(slurm, props["batchSystemID"])


@pytest.mark.slurm
def test_slurm_refuses_an_unknown_partition(slurm_devsite: Devsite) -> None:
    job = slurm_devsite.client().new_job(shell_job("true", Resources={"Queue": "nosuchqueue"}))
    props = wait_status(job, {"SUCCESSFUL", "FAILED"})
    assert props["status"] == "FAILED"
    assert "partition" in props["statusMessage"].lower(), props
    assert props["batchSystemID"] == "N/A"
    assert any("Submission attempt failed" in line for line in props["log"])


@pytest.mark.slurm
def test_slurm_site_runs_login_node_jobs_locally(
    slurm_devsite: Devsite, slurm: SlurmCluster
) -> None:
    job = slurm_devsite.client().new_job(
        shell_job("echo on the login node; sleep 0.5", **{"Job type": "ON_LOGIN_NODE"})
    )
    props = wait_status(job, {"RUNNING", "SUCCESSFUL"})
    assert props["batchSystemID"].startswith("INTERACTIVE_") and props["queue"] == "N/A"
    assert props["batchSystemID"] not in squeue_ids(slurm)
    assert wait_status(job, {"SUCCESSFUL", "FAILED"})["status"] == "SUCCESSFUL"
    assert read(job.working_dir, "stdout") == "on the login node\n"


@pytest.mark.slurm
def test_slurm_shutdown_cancels_jobs(slurm: SlurmCluster, tmp_path: Path) -> None:
    site = Devsite(workdir=tmp_path / "work", log=tmp_path / "devsite.log")
    site.start("--slurm", env=slurm.env)
    try:
        job = site.client().new_job(shell_job("sleep 300"))
        bss_id = wait_status(job, {"RUNNING", "QUEUED"}, timeout=15)["batchSystemID"]
        deadline = time.monotonic() + 10
        while bss_id == "N/A" and time.monotonic() < deadline:
            time.sleep(0.1)
            bss_id = job.properties["batchSystemID"]
    finally:
        site.stop()
    assert "cancelling Slurm jobs" in site.log_text()
    wait_gone(slurm, bss_id)


def test_userinfo_answers_are_kept_a_while_by_a_hash_of_the_token() -> None:
    """The development site asks the provider once per token and minute, not on every
    call of a lab that polls its job; the token itself is not what it keeps."""
    from devsite.auth import UserinfoCache

    cache = UserinfoCache(seconds=0.2, size=2)
    assert cache.get("t1") == (False, None)
    cache.put("t1", ("alice", ("alice1",)))
    cache.put("t2", None)  # a refusal is kept too
    assert cache.get("t1") == (True, ("alice", ("alice1",)))
    assert cache.get("t2") == (True, None)
    assert all(b"t1" not in key for key in cache._answers)
    cache.put("t3", ("bob", ("bob",)))  # at most two: the oldest goes
    assert cache.get("t1") == (False, None)
    time.sleep(0.25)
    assert cache.get("t3") == (False, None)  # expired


def test_an_empty_userinfo_cache_asks_the_provider_at_every_call() -> None:
    from devsite.auth import UserinfoCache

    cache = UserinfoCache(seconds=0)
    cache.put("t1", ("alice", ("alice1",)))
    assert cache.get("t1") == (False, None) and not cache._answers


@pytest.mark.parametrize(("args", "seconds"), [([], 60.0), (["--userinfo-cache", "2.5"], 2.5)])
def test_the_userinfo_cache_is_set_on_the_command_line(
    args: list[str], seconds: float, tmp_path: Path
) -> None:
    """A test whose tokens live seconds shortens it, so that an expired token is refused
    by the site as soon as UNICORE/X would refuse it."""
    argv = ["unicore-devsite", "--workdir", str(tmp_path), "--oidc-userinfo"]
    parsed = build_parser().parse_args([*argv, "http://127.0.0.1:9/userinfo", *args])
    app = make_app(parsed)
    assert app is not None and app.state.devsite.userinfo.seconds == seconds
