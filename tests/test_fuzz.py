"""Fuzzing every service's API from its own OpenAPI (schemathesis), as each kind of
caller: the hub acting for a person, an admin, and nobody (no token). Whatever is
sent, no answer is a server error, and no answer shows another person's lab (or,
on the development site, another person's job).

Each service runs as `lablink` runs it, in a process of its own. Bounded for CI:
a fixed number of examples per operation (``LABLINK_FUZZ_EXAMPLES``, 15 by
default), derandomized so that a run is repeatable.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from backend.procs import free_port
from tests.helpers import site
from tests.helpers.api import lab_request
from tests.helpers.devsite import Devsite, shell_job
from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.peers import peer_missing
from tests.helpers.stack import end_process, launch
from tests.helpers.userlabs import UserlabManager

pytestmark = [pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("LABLINK_FUZZ_EXAMPLES", "15"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Service:
    name: str
    url: str  # the base URL the OpenAPI's paths are under
    callers: dict[str, dict[str, str]]  # caller: headers
    proc: subprocess.Popen[bytes] | None = None
    # what must never show to the callers that are not its owner or an admin
    secret_of_others: list[str] = field(default_factory=list)
    sent: int = 0  # requests made
    statuses: set[int] = field(default_factory=set)
    schema_path: str = "/api/v1/openapi.json"
    prepare: Callable[[schemathesis.Case], None] | None = None  # before a case is sent


def start(
    name: str, argv: list[str], env: dict[str, str], directory: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return (
            httpx.get(f"{url}/api/v1/openapi.json", timeout=2, trust_env=False).status_code == 200
        )

    proc = launch([*argv, "--port", str(port)], env, directory / f"{name}.log", ready, name)
    return url, proc


@pytest.fixture(scope="module")
def backend_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("fuzz-backend")
    hub, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    document = site.doc(directory / "state", f"sqlite+aiosqlite:///{directory}/backend.sqlite")
    site_file = site.write(document, directory / "site.yaml")
    env = {**os.environ, site.HUB_TOKEN_ENV: hub, site.ADMIN_TOKEN_ENV: admin}
    argv = [sys.executable, "-m", "backend.cli", "backend", "--site", str(site_file)]
    url, proc = start("backend", argv, env, directory)
    # bob's lab: nobody but bob and an admin may ever see it
    bob = {"Authorization": f"Bearer {hub}", "X-Lablink-User": "bob"}
    lab = httpx.post(f"{url}/api/v1/labs", json=lab_request("bob"), headers=bob, timeout=30)
    assert lab.status_code == 202, lab.text
    service = Service(
        "backend",
        url,
        {
            "hub for alice": {"Authorization": f"Bearer {hub}", "X-Lablink-User": "alice"},
            "admin": {"Authorization": f"Bearer {admin}"},
            "nobody": {},
        },
        proc,
        [lab.json()["id"]],
    )
    yield service
    httpx.delete(f"{url}/api/v1/labs/{lab.json()['id']}", headers=bob, timeout=30)
    end_process(proc, signal.SIGTERM, 20)


@pytest.fixture(scope="module")
def tunnel_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("fuzz-tunnel")
    token = secrets.token_urlsafe(24)
    ssh = {
        "login_nodes": [{"host": "127.0.0.1", "port": 9}],  # nothing answers: no tunnel opens
        "user": "lablink",
        "key_file": str(directory / "key"),
        "known_hosts": str(directory / "known_hosts"),
        "destinations": [{"hosts": "127.0.0.1"}],
        "connect_timeout": 1,
    }
    site_file = site.write(
        site.tunnel_service_doc(directory / "state", ssh), directory / "site.yaml"
    )
    env = {
        **os.environ,
        "LABLINK_TUNNEL_TOKEN": token,
        site.HUB_TOKEN_ENV: secrets.token_urlsafe(24),
    }
    argv = [sys.executable, "-m", "backend.cli", "tunnel", "--site", str(site_file)]
    url, proc = start("tunnel", argv, env, directory)
    yield Service(
        "tunnel", url, {"backend": {"Authorization": f"Bearer {token}"}, "nobody": {}}, proc
    )
    end_process(proc, signal.SIGTERM, 20)


@pytest.fixture(scope="module")
def userlab_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("fuzz-userlabs")
    kube = KubeApi(directory / "kube")
    try:
        kube.start()
    except KubeError as exc:
        peer_missing("Kubernetes API emulator (kmock)", str(exc))
    manager = UserlabManager.for_kube(directory / "manager", kube)
    manager.start()
    headers = {"Authorization": f"Bearer {manager.token}"}
    yield Service("UserLab Manager", manager.url, {"backend": headers, "nobody": {}}, manager.proc)
    manager.stop()
    kube.stop()


HELD = "haveClientStageIn"


def hold_submitted_jobs(case: schemathesis.Case) -> None:
    """A job the fuzzer submits waits for a stage-in that never comes: UNICORE runs what
    an authenticated person sends (shell words and all), and a fuzzer's strings are
    not commands to run on the test machine."""
    if case.method == "POST" and isinstance(case.body, dict) and "/actions/" not in case.path:
        case.body[HELD] = "true"
    if case.method == "POST" and case.path.endswith("/actions/{action}"):
        if isinstance(case.path_parameters, dict) and case.path_parameters.get("action") in (
            "start",
            "restart",
        ):
            case.path_parameters["action"] = "abort"


@pytest.fixture(scope="module")
def devsite_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("fuzz-devsite")
    site = Devsite(workdir=directory / "work", log=directory / "devsite.log")
    site.start()
    try:
        # bob's job, held before it runs: nobody but bob may ever see it
        with site.http("bob") as bob:
            resp = bob.post("/jobs", json=shell_job("true", **{HELD: "true"}))
            assert resp.status_code == 201, resp.text
            job_id = resp.headers["location"].rsplit("/", 1)[-1]
        basic = "Basic " + base64.b64encode(f"alice:{site.passwords['alice']}".encode()).decode()
        yield Service(
            "development site",
            f"http://127.0.0.1:{site.port}",
            {
                "alice": {"Authorization": basic},
                "alice's token": {"Authorization": f"Bearer {site.token}"},
                "nobody": {},
            },
            site.proc,
            [job_id],
            schema_path=f"/{site.site}/rest/core/openapi.json",
            prepare=hold_submitted_jobs,
        )
    finally:
        site.stop()


def check(service: Service, caller: str, case: schemathesis.Case) -> None:
    if service.prepare is not None:
        service.prepare(case)
    resp = case.call(base_url=service.url, headers=service.callers[caller], timeout=30)
    service.sent += 1
    service.statuses.add(resp.status_code)
    where = f"{case.method} {case.formatted_path} as {caller}: {resp.status_code} {resp.text[:300]}"
    assert resp.status_code < 500, where
    if caller == "nobody" and case.path == "/healthz":
        # the one route without a token (load balancers, probes): it tells only whether
        # this replica can serve
        assert resp.status_code in (200, 503), where
        assert set(resp.json()) <= {"status", "detail"}, where
    elif caller == "nobody":
        assert resp.status_code in (401, 404, 405, 413, 422, 400), where
    if caller not in ("admin", "backend"):  # the backend's peers: one caller
        for secret in service.secret_of_others:
            assert secret not in resp.text, where


def fuzz(service: Service) -> int:
    """Every operation of the service's OpenAPI, ``EXAMPLES`` generated cases each, each
    case sent as each kind of caller; the number of operations."""
    schema = schemathesis.openapi.from_url(service.url + service.schema_path)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            for caller in service.callers:
                check(service, caller, case)

        run()
    return len(operations)


def test_the_backend_answers_anything_with_no_server_error_and_no_leak(
    backend_service: Service,
) -> None:
    operations = fuzz(backend_service)
    assert operations >= 10, operations
    assert backend_service.sent >= operations * 3
    assert {200, 401, 404, 422} <= backend_service.statuses, backend_service.statuses


def test_the_userlab_manager_answers_anything_with_no_server_error(
    userlab_service: Service,
) -> None:
    operations = fuzz(userlab_service)
    assert operations >= 4
    assert {401, 404, 422} <= userlab_service.statuses, userlab_service.statuses


def test_the_tunnel_service_answers_anything_with_no_server_error(
    tunnel_service: Service,
) -> None:
    operations = fuzz(tunnel_service)
    assert operations >= 4
    assert tunnel_service.sent >= operations * 2
    assert {200, 401} <= tunnel_service.statuses, tunnel_service.statuses


def test_the_development_site_answers_anything_with_no_server_error_and_no_leak(
    devsite_service: Service,
) -> None:
    operations = fuzz(devsite_service)
    assert operations >= 20, operations
    assert devsite_service.sent >= operations * 3
    # 400: generated job descriptions reached the site's checks (held ones may pass too)
    assert {200, 400, 401, 404} <= devsite_service.statuses, devsite_service.statuses
