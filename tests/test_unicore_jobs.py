"""HPC systems as data: settings, catalog, option checks and job descriptions (pure)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backend.catalog import OptionError, catalog, validate_options
from backend.certs import hub_forward_tls
from backend.settings import Settings, SettingsError
from backend.systems.batch.script import (
    BadHubCa,
    BadLabFile,
    job_name,
    parse_lab_file,
    start_script,
)
from backend.systems.unicore import jobs
from backend.systems.unicore.config import UnicoreSystem
from backend.systems.unicore.jobs import job_description
from tests.helpers import site

pytestmark = pytest.mark.unicore


def hpc_settings(tmp_path: Path, **system: Any) -> Settings:
    """A site whose one system ``hpc`` is the catalog's UNICORE system, ``system`` on top."""
    systems = {"hpc": site.unicore_catalog_system(**system)}
    doc = site.doc(tmp_path, systems=systems, tokens=site.hub_token("HUB_TOKEN"))
    return site.settings(doc, "site.yaml")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return hpc_settings(tmp_path)


# -- settings -----------------------------------------------------------------------


def test_a_reservation_for_an_unknown_partition_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"systems\.hpc: .*reservation 'x' names partition"):
        hpc_settings(tmp_path, reservations={"x": {"partitions": ["nope"]}})


def test_a_range_upside_down_names_its_key_and_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        hpc_settings(tmp_path, partitions={"batch": {"nodes": {"min": 4, "max": 2}}})
    assert "systems.hpc.partitions.batch.nodes" in str(err.value)
    assert "line" in str(err.value)


def test_the_url_must_be_a_unicore_base(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"systems\.hpc\.url"):
        hpc_settings(tmp_path, url="ftp://example.org/")


# -- catalog ------------------------------------------------------------------------


def test_the_catalog_gives_each_person_their_own_accounts(settings: Settings) -> None:
    alice = catalog(settings, "alice")["systems"][0]
    assert alice["accounts"] == ["alice", "alice2"]
    assert alice["projects"] == ["p1", "p2"]
    parts = {p["name"]: p for p in alice["partitions"]}
    assert parts["batch"]["nodes"] == {"min": 1, "max": 4, "default": 1}
    assert parts["batch"]["runtime"] == {"min": 10, "max": 120, "default": 30}
    assert parts["batch"]["reservations"] == ["workshop"]
    assert parts["login"]["interactive"] is True
    bob = catalog(settings, "bob", frozenset({"trainees"}))["systems"][0]
    assert bob["accounts"] == ["bob"] and bob["projects"] == ["training"]
    assert catalog(settings, "mallory")["systems"] == []  # no account: not offered


def test_defaults_fill_what_the_request_leaves_out(settings: Settings) -> None:
    name, opts = validate_options(settings, {"system": "hpc"}, "alice")
    assert name == "hpc"
    assert opts == {
        "system": "hpc",
        "account": "alice",
        "project": "p1",
        "partition": "batch",
        "nodes": 1,
        "runtime": 30,
        "gpus": 0,
    }
    _, opts = validate_options(
        settings,
        {"partition": "batch", "nodes": "3", "runtime": 120, "reservation": "workshop"},
        "alice",
    )
    assert (opts["nodes"], opts["runtime"], opts["reservation"]) == (3, 120, "workshop")


@pytest.mark.parametrize(
    ("options", "user", "field", "words"),
    [
        ({"account": "root"}, "alice", "account", ["Account: 'root'", "choose alice or alice2"]),
        ({"project": "other"}, "alice", "project", ["Project: 'other'", "choose p1 or p2"]),
        (
            {"partition": "huge"},
            "alice",
            "partition",
            ["Partition: 'huge' is not offered on system Test HPC", "choose batch, gpus or"],
        ),
        ({"nodes": 9}, "alice", "nodes", ["Nodes: 9 is more than partition batch allows"]),
        ({"nodes": "two"}, "alice", "nodes", ["Nodes: 'two' is not a whole number", "1 to 4"]),
        ({"nodes": True}, "alice", "nodes", ["not a whole number"]),
        ({"nodes": -1}, "alice", "nodes", ["Nodes: -1 is less than", "choose 1 to 4."]),
        (
            {"runtime": 5},
            "alice",
            "runtime",
            ["Run time: 5 minutes is less than partition batch allows; choose 10 to 120 minutes."],
        ),
        ({"gpus": 1}, "alice", "gpus", ["GPUs per node: 1 is more than partition batch", "0."]),
        ({"partition": "gpus", "gpus": 5}, "alice", "gpus", ["choose 1 to 4."]),
        (
            {"partition": "gpus", "reservation": "workshop"},
            "alice",
            "reservation",
            ["Reservation: 'workshop' is not offered for partition gpus; leave it empty."],
        ),
        ({"reservation": "other"}, "alice", "reservation", ["choose workshop."]),
        ({"queue": "batch"}, "alice", "queue", ["'queue' is not an option of system Test HPC"]),
        ({}, "mallory", "system", ["You have no account on system Test HPC"]),
        ({"account": "alice"}, "bob", "account", ["choose bob."]),
        (
            {"account": "bob", "project": "p1"},
            "bob",
            "project",
            ["Project: 'p1' is not offered with account bob on system Test HPC; choose training."],
        ),
    ],
)
def test_options_not_offered_are_refused_by_name(
    settings: Settings, options: dict[str, Any], user: str, field: str, words: list[str]
) -> None:
    with pytest.raises(OptionError) as err:
        groups = frozenset({"trainees"}) if user == "bob" else frozenset()
        validate_options(settings, {"system": "hpc", **options}, user, groups)
    assert err.value.field == field
    message = str(err.value)
    for word in words:
        assert word in message
    assert message.endswith(".") and "\n" not in message
    assert "options." not in message and "'hpc'" not in message  # no field paths, no ids


def test_an_account_and_a_project_go_together_as_granted(tmp_path: Path) -> None:
    """Each access entry grants its projects with its own accounts only: a UNICORE
    site refuses a job of one person's account charged to another grant's project."""
    settings = hpc_settings(
        tmp_path,
        access=[
            {"users": ["carol"], "accounts": ["carol"], "projects": ["chem"]},
            {"users": ["carol"], "accounts": ["carol-ext"], "projects": ["ext", "shared"]},
            {"users": ["carol"], "accounts": ["carol"], "projects": ["shared"]},
        ],
    )
    entry = catalog(settings, "carol")["systems"][0]
    assert entry["pairs"] == {"carol": ["chem", "shared"], "carol-ext": ["ext", "shared"]}
    project = next(f for f in entry["fields"] if f["key"] == "project")
    when = {c["value"]: c["when"] for c in project["choices"]}
    assert when == {
        "chem": {"account": ["carol"]},
        "shared": {"account": ["carol", "carol-ext"]},
        "ext": {"account": ["carol-ext"]},
    }
    _, opts = validate_options(settings, {"system": "hpc", "account": "carol-ext"}, "carol")
    assert opts["project"] == "ext"  # the first granted with the account
    _, opts = validate_options(
        settings, {"system": "hpc", "account": "carol", "project": "shared"}, "carol"
    )
    assert (opts["account"], opts["project"]) == ("carol", "shared")
    with pytest.raises(OptionError) as err:
        validate_options(settings, {"system": "hpc", "account": "carol", "project": "ext"}, "carol")
    assert err.value.field == "project"
    assert str(err.value) == (
        "Project: 'ext' is not granted together with account carol on system Test HPC; "
        "with carol choose chem or shared."
    )


# -- job descriptions -----------------------------------------------------------------


def describe(settings: Settings, options: dict[str, Any], env: dict[str, str] | None = None):
    system = settings.systems["hpc"]
    assert isinstance(system, UnicoreSystem)
    _, clean = validate_options(settings, {"system": "hpc", **options}, "alice")
    return clean, job_description(
        system,
        clean,
        lab_id="lab-1",
        server_name="gpu",
        env=env or {"JUPYTERHUB_API_TOKEN": "tok", "PATH": "/evil"},
        prefix="/user/alice/gpu/",
    )


def test_a_batch_job_description(settings: Settings) -> None:
    clean, desc = describe(
        settings,
        {"project": "p2", "nodes": 2, "runtime": 45, "reservation": "workshop"},
    )
    assert desc["Executable"] == "bash"
    assert desc["Arguments"] == ["start.sh"]
    assert desc["Job type"] == "BATCH"
    assert desc["Resources"] == {
        "Queue": "batch",
        "Nodes": "2",
        "Runtime": "2700",
        "Reservation": "workshop",
    }
    assert desc["Project"] == "p2"
    assert desc["Tags"] == ["lablink", "lablink-lab-1"]
    assert desc["Name"] == "lablink-gpu"  # the lab's name, as squeue shows it
    [imp] = desc["Imports"]
    assert imp["To"] == "start.sh" and imp["From"] == "inline://dummy"
    env = desc["Environment"]
    assert env["JUPYTERHUB_API_TOKEN"] == "tok"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/user/alice/gpu/"
    assert env["LABLINK_LAB_HOST"] == "127.0.0.1"  # the admin's variable
    assert "PATH" not in env  # the hub's PATH means nothing on the compute node
    assert jobs.user_preferences(clean) == "uid:alice,group:p2"


def test_gpus_use_the_sites_resource_name(tmp_path: Path) -> None:
    settings = hpc_settings(tmp_path, gpu_resource="GPUsPerNode")
    _, desc = describe(settings, {"partition": "gpus", "gpus": 3})
    assert desc["Resources"]["GPUsPerNode"] == "3"
    assert "GPUS" not in desc["Resources"]


def test_an_interactive_partition_runs_on_a_login_node(settings: Settings) -> None:
    _, desc = describe(settings, {"partition": "login"})
    assert desc["Job type"] == "ON_LOGIN_NODE"
    assert desc["Login node"] == "login*"
    assert "Queue" not in desc["Resources"] and "Nodes" not in desc["Resources"]


def test_nothing_a_person_sends_reaches_the_script(settings: Settings) -> None:
    hostile = "$(touch /tmp/pwned); `id` \"'\n"
    _, desc = describe(settings, {}, env={"JUPYTERHUB_USER": hostile, "X": hostile})
    script = desc["Imports"][0]["Data"]
    assert script == start_script(settings.systems["hpc"])  # type: ignore[arg-type]
    assert hostile not in script and "alice" not in script
    assert desc["Environment"]["X"] == hostile  # it travels as data


def test_the_start_script_writes_lab_json_and_runs_the_command(tmp_path: Path) -> None:
    settings = hpc_settings(
        tmp_path,
        setup=["export MARK=from-setup"],
        lab_command=["/bin/sh", "-c", 'echo "$MARK $JUPYTERHUB_SERVICE_URL" > out.txt'],
    )
    system = settings.systems["hpc"]
    assert isinstance(system, UnicoreSystem)
    (tmp_path / "start.sh").write_text(start_script(system))
    env = {
        "PATH": "/usr/bin:/bin",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/a/",
        "LABLINK_LAB_HOST": "h1",
    }
    subprocess.run(["bash", "start.sh"], cwd=tmp_path, env=env, check=True, timeout=20)
    lab = json.loads((tmp_path / "lab.json").read_text())
    assert lab["host"] == "h1" and 1024 <= lab["port"] <= 65535
    assert (tmp_path / "out.txt").read_text().strip() == (
        f"from-setup http://0.0.0.0:{lab['port']}/user/a/"
    )


def run_lab(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the start script in the job directory ``tmp_path/job`` with a lab command that
    tells where it runs and with which shell (files ``pwd``, ``shell`` in the job dir)."""
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    tell = f'pwd > {job}/pwd; printf %s "$SHELL" > {job}/shell; : > notebook.ipynb'
    settings = hpc_settings(tmp_path, setup=[], lab_command=["/bin/sh", "-c", tell])
    system = settings.systems["hpc"]
    assert isinstance(system, UnicoreSystem)
    (job / "start.sh").write_text(start_script(system))
    base = {"PATH": "/usr/bin:/bin", "JUPYTERHUB_SERVICE_PREFIX": "/user/a/"}
    return subprocess.run(
        ["bash", "start.sh"], cwd=job, env={**base, **env}, capture_output=True, text=True,
        check=True, timeout=20,
    )  # fmt: skip


def test_the_lab_runs_in_the_home_and_the_job_directory_keeps_the_jobs_files(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = run_lab(tmp_path, {"HOME": str(home)})
    job = tmp_path / "job"
    assert (job / "pwd").read_text().strip() == str(home)
    assert (home / "notebook.ipynb").exists() and not (job / "notebook.ipynb").exists()
    assert (job / "lab.json").exists() and not (home / "lab.json").exists()
    assert "starting JupyterLab on" in out.stdout and f"in {home}" in out.stdout
    login = pwd.getpwuid(os.getuid()).pw_shell
    assert (job / "shell").read_text() == login  # the login shell, not $SHELL
    run_lab(tmp_path, {"HOME": str(home), "SHELL": "/bin/false-shell"})
    assert (job / "shell").read_text() == login


@pytest.mark.parametrize("home", [None, "/nonexistent/lablink-home", "file"])
def test_without_a_home_the_lab_runs_in_the_job_directory_and_says_so(
    tmp_path: Path, home: str | None
) -> None:
    if home == "file":
        home = str(tmp_path / "file")
        Path(home).write_text("not a directory")
    out = run_lab(tmp_path, {"HOME": home} if home else {})
    job = tmp_path / "job"
    assert (job / "pwd").read_text().strip() == str(job)
    assert "is not a directory here; JupyterLab starts in the job directory" in out.stdout
    assert (job / "shell").read_text()  # SHELL is set all the same


@pytest.mark.parametrize(
    ("server", "name"),
    [
        ("", "lablink"),
        ("gpu", "lablink-gpu"),
        ("my lab; rm -rf ~", "lablink-my-lab-rm-rf"),
        ("$(id)`x`", "lablink-id-x"),
        ("Ünïcode.Lab_2", "lablink-n-code.Lab_2"),
        ("---", "lablink"),
        ("x" * 300, "lablink-" + "x" * 56),
    ],
)
def test_the_job_is_named_after_the_lab_in_plain_characters(server: str, name: str) -> None:
    assert job_name(server) == name
    assert len(name) <= 64


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"host": "a;b", "port": 8888}', "host"),
        (b'{"host": "node1", "port": "8888"}', "port"),
        (b'{"host": "node1", "port": 80}', "port"),
        (b'{"host": "node1", "port": true}', "port"),
        (b'{"host": "evil.example.org", "port": 8888}', "lab_hosts"),
    ],
)
def test_lab_json_is_checked(tmp_path: Path, data: bytes, words: str) -> None:
    system = hpc_settings(tmp_path, lab_hosts=["node*", "127.0.0.1"]).systems["hpc"]
    assert isinstance(system, UnicoreSystem)
    with pytest.raises(BadLabFile, match=words):
        parse_lab_file(data, system)
    address = parse_lab_file(b'{"host": "node7", "port": 9999}', system)
    assert (address.host, address.port) == ("node7", 9999)


def test_job_status_to_lab_state() -> None:
    assert jobs.lab_state_for("READY") == "submitted"
    assert jobs.lab_state_for("STAGINGIN") == "submitted"
    assert jobs.lab_state_for("QUEUED") == "queued"
    assert jobs.lab_state_for("RUNNING") == "starting"
    assert jobs.lab_state_for("SUCCESSFUL") is None
    assert jobs.lab_state_for("FAILED") is None


def test_a_local_address_needs_a_pattern_that_names_it(tmp_path: Path) -> None:
    anywhere = hpc_settings(tmp_path).systems["hpc"]  # lab_hosts: ["*"]
    assert isinstance(anywhere, UnicoreSystem)
    assert parse_lab_file(b'{"host": "node7", "port": 9999}', anywhere).host == "node7"
    for host in ("127.0.0.1", "localhost", "169.254.169.254", "0.0.0.0", "127.1.2.3"):
        data = json.dumps({"host": host, "port": 9999}).encode()
        with pytest.raises(BadLabFile, match="local address"):
            parse_lab_file(data, anywhere)
    named = hpc_settings(tmp_path, lab_hosts=["127.0.0.1"]).systems["hpc"]
    assert isinstance(named, UnicoreSystem)
    assert parse_lab_file(b'{"host": "127.0.0.1", "port": 9999}', named).port == 9999


def test_plain_http_is_only_for_this_machine(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"systems\.hpc\.url: .*use https://"):
        hpc_settings(tmp_path, url="http://unicore.example.org/SITE/rest/core")
    assert hpc_settings(tmp_path, url="https://unicore.example.org/SITE/rest/core")


def test_a_user_name_that_is_no_account_gives_no_account(tmp_path: Path) -> None:
    settings = hpc_settings(tmp_path)
    assert catalog(settings, "Alice@idp", frozenset({"trainees"}))["systems"] == []
    with pytest.raises(OptionError, match="no account on system Test HPC"):
        validate_options(settings, {"system": "hpc"}, "Alice@idp", frozenset({"trainees"}))


@pytest.mark.parametrize("value", ["\u00b2", "\u0661", "9" * 5000, "1e3", " 2 x"])
def test_odd_numbers_are_refused_as_options(settings: Settings, value: str) -> None:
    with pytest.raises(OptionError, match=r"^Nodes: "):
        validate_options(settings, {"system": "hpc", "nodes": value}, "alice")


# -- the hub's API through the login nodes ----------------------------------------------

SSH = {
    "login_nodes": [{"host": "login1.example.org"}, {"host": "login2.example.org"}],
    "user": "lablink",
    "key_file": "/etc/lablink/id_ed25519",
    "known_hosts": "/etc/lablink/known_hosts",
    "destinations": [{"hosts": "jwc*"}],
}
HUB_ENV = {
    "JUPYTERHUB_API_URL": "http://10.1.2.3:8081/jupyter/hub/api",
    "JUPYTERHUB_ACTIVITY_URL": "http://10.1.2.3:8081/jupyter/hub/api/users/alice/activity",
    "JUPYTERHUB_BASE_URL": "/jupyter/",
}


def hub_tls(tmp_path: Path, *hosts: str) -> dict[str, str]:
    """A CA and certificate for ``hosts`` (``hub_forward.tls`` of a site file)."""
    return hub_forward_tls(tmp_path / "hub-tls", list(hosts) or ["login1.example.org"]).settings()


def test_labs_reach_the_hub_api_through_the_login_nodes_reverse_forward(tmp_path: Path) -> None:
    ssh = {**SSH, "hub_forward": {"port": 25488, "tls": hub_tls(tmp_path)}}
    _, desc = describe(hpc_settings(tmp_path, tunnel="ssh", ssh=ssh), {}, env=HUB_ENV)
    env = desc["Environment"]
    assert env["JUPYTERHUB_API_URL"] == "https://login1.example.org:25488/jupyter/hub/api"
    assert env["JUPYTERHUB_ACTIVITY_URL"] == (
        "https://login1.example.org:25488/jupyter/hub/api/users/alice/activity"
    )
    assert env["JUPYTERHUB_BASE_URL"] == "/jupyter/"  # a path: the browser's, unchanged

    ssh["hub_forward"] = {"port": 25488, "url": "https://login-int:25488", "tls": hub_tls(tmp_path)}
    _, desc = describe(hpc_settings(tmp_path, tunnel="ssh", ssh=ssh), {}, env=HUB_ENV)
    assert desc["Environment"]["JUPYTERHUB_API_URL"] == "https://login-int:25488/jupyter/hub/api"


def test_without_a_reverse_forward_the_hubs_own_api_url_is_kept(tmp_path: Path) -> None:
    for settings in (hpc_settings(tmp_path, tunnel="ssh", ssh=SSH), hpc_settings(tmp_path)):
        _, desc = describe(settings, {}, env=HUB_ENV)
        assert desc["Environment"]["JUPYTERHUB_API_URL"] == HUB_ENV["JUPYTERHUB_API_URL"]
        assert "SSL_CERT_FILE" not in desc["Imports"][0]["Data"]


@pytest.mark.parametrize(
    ("hub_forward", "words"),
    [
        ({"port": 22}, "hub_forward.port"),
        ({"port": 25488, "url": "https://login1/hub/api"}, "hub_forward.url"),
        ({"port": 25488, "url": "http://login1:25488"}, "hub_forward.url"),
        ({"port": 25488, "bind": "0.0.0.0; rm -rf /"}, "hub_forward.bind"),
        ({"port": 25488, "listen": "x"}, "hub_forward.listen"),
        ({"port": 25488, "tls": {"cert_file": "c", "key_file": "k"}}, "hub_forward.tls.ca_file"),
    ],
)
def test_a_bad_reverse_forward_names_its_key(
    tmp_path: Path, hub_forward: dict[str, Any], words: str
) -> None:
    hub_forward = {"tls": hub_tls(tmp_path), **hub_forward}
    with pytest.raises(SettingsError, match=words.replace(".", r"\.")):
        hpc_settings(tmp_path, tunnel="ssh", ssh={**SSH, "hub_forward": hub_forward})


def test_a_reverse_forward_without_tls_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """Plain HTTP on a port of a shared login node gives the lab's hub token to whoever
    holds the port: there is no such setting."""
    with pytest.raises(SettingsError, match=r"hub_forward") as err:
        hpc_settings(tmp_path, tunnel="ssh", ssh={**SSH, "hub_forward": {"port": 25488}})
    assert "over TLS they verify" in str(err.value)
    assert "lablink hub-forward-tls" in str(err.value)


def test_the_start_script_makes_the_lab_trust_the_hub_forwards_ca(tmp_path: Path) -> None:
    tls = hub_tls(tmp_path, "login1.example.org")
    ssh = {**SSH, "hub_forward": {"port": 25488, "tls": tls}}
    settings = hpc_settings(
        tmp_path,
        tunnel="ssh",
        ssh=ssh,
        setup=[],
        lab_command=["/bin/sh", "-c", 'cp "$SSL_CERT_FILE" bundle.pem'],
    )
    system = settings.systems["hpc"]
    assert isinstance(system, UnicoreSystem)
    (tmp_path / "start.sh").write_text(start_script(system))
    env = {"PATH": "/usr/bin:/bin", "JUPYTERHUB_SERVICE_PREFIX": "/u/", "TMPDIR": str(tmp_path)}
    subprocess.run(["bash", "start.sh"], cwd=tmp_path, env=env, check=True, timeout=20)
    bundle = (tmp_path / "bundle.pem").read_text()
    ca = Path(tls["ca_file"]).read_text()
    assert bundle.endswith(ca)  # the hub forward's CA ...
    system_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if system_bundle.exists():  # ... besides the compute node's own CAs
        assert bundle.startswith(system_bundle.read_text()[:200])
    # the site's CA file is checked PEM before it goes into the script
    Path(tls["ca_file"]).write_text("-----BEGIN CERTIFICATE-----\n$(id)\n")
    with pytest.raises(BadHubCa, match="no PEM certificate"):
        start_script(system)
    with pytest.raises(SettingsError, match=r"hub_forward\.tls\.ca_file"):
        from backend.settings import hub_forward_cas

        hub_forward_cas(settings)


def test_systems_that_share_a_login_node_must_log_in_alike(tmp_path: Path) -> None:
    systems = {
        "hpc": site.unicore_catalog_system(tunnel="ssh", ssh=SSH),
        "booster": site.unicore_catalog_system(tunnel="ssh", ssh={**SSH, "user": "other"}),
    }
    doc = site.doc(tmp_path, systems=systems, tokens=site.hub_token("HUB_TOKEN"))
    with pytest.raises(SettingsError, match=r"systems\.booster\.ssh\.login_nodes\.0") as err:
        site.settings(doc, "site.yaml")
    assert "login node of system 'hpc'" in str(err.value)
    doc["systems"]["booster"] = site.unicore_catalog_system(tunnel="ssh", ssh=SSH)  # the same login
    site.settings(doc, "site.yaml")
