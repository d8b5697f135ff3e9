"""The backend's metrics (backend/observe.py, served by backend/metrics.py): they move
as labs start, fail and stop; a VO's and a workshop's usage against their limits; peer
calls timed per peer; /metrics behind its own token, on its own port, or off; one
log line per transition. (The same figures on every kind: tests/contract.)"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.app import create_app
from backend.bounded import turn_taking_client
from backend.cli import _setup_logging, build_parser
from backend.observe import BackendMetrics
from backend.procs import free_port
from backend.settings import Settings, SettingsError
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.metrics import Scrape, scrape

pytestmark = [pytest.mark.metrics, pytest.mark.integration]

WORKSHOPS = {"instructors": {"users": ["demo"]}, "grace": 0, "limits": {"participants": 20}}
VOS = {
    "training": {"members": {"users": ["alice", "bob", "carol"]}, "quota": {"labs": 5}},
    "research": {"members": {"users": ["alice"]}},
}


def metrics_site(tmp_path: Path, database_url: str, **extra: Any) -> Settings:
    doc = site.doc(tmp_path / "state", database_url, vos=VOS, workshops=WORKSHOPS, **extra)
    return site.settings(doc)


async def start(backend: RunningBackend, user: str, server: str = "", **env: str) -> str:
    body = lab_request(user, server, vo="training")
    body["env"].update(env)
    async with backend.client(user) as client:
        resp = await client.post("/labs", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


async def state_of(backend: RunningBackend, lab_id: str, states: set[str]) -> dict[str, Any]:
    async with backend.client(None, admin_token=True) as admin:
        return await wait_state(admin, lab_id, states)


def no_person_in_labels(got: Scrape, *people: str) -> None:
    for sample in got.samples:
        for value in sample.labels.values():
            assert value not in people, f"{sample.name} carries a person: {sample.labels}"


async def test_the_metrics_move_as_labs_start_fail_and_stop(
    tmp_path: Path, database_url: str, start_backend: BackendFactory
) -> None:
    backend = await start_backend(metrics_site(tmp_path, database_url))
    before = await backend.metrics()
    assert before.types["lablink_lab_start_duration_seconds"] == "histogram"
    assert before.types["lablink_lab_starts"] == "counter"  # the family; samples end _total
    assert before.find("lablink_lab_starts_total", system="local", kind="local")
    assert before.value("lablink_lab_starts_total") == 0
    assert before.value("lablink_lab_failures_total", reason="ended") == 0
    assert before.value("lablink_vo_labs", vo="training") == 0
    assert before.value("lablink_vo_labs_limit", vo="training") == 5
    assert not before.find("lablink_vo_labs_limit", vo="research")  # no quota: no limit

    running = await start(backend, "alice")
    await state_of(backend, running, {"running"})
    got = await backend.metrics()
    labels = {"system": "local", "kind": "local", "choice": "", "vo": "training", "workshop": ""}
    assert got.value("lablink_labs", state="running", **labels) == 1
    assert got.value("lablink_lab_starts_total", system="local") == 1
    assert got.value("lablink_lab_start_duration_seconds_count", system="local") == 1
    assert 0 < got.value("lablink_lab_start_duration_seconds_sum", system="local") < 20
    assert got.value("lablink_vo_labs", vo="training") == 1

    crashed = await start(backend, "bob", FAKELAB_MODE="crash")
    await state_of(backend, crashed, {"failed"})
    ends = await start(backend, "carol", FAKELAB_MODE="exit-later", FAKELAB_SECONDS="1")
    await state_of(backend, ends, {"running"})
    await state_of(backend, ends, {"stopped"})
    async with backend.client("alice") as alice:
        assert (await alice.delete(f"/labs/{running}")).status_code == 202
    await state_of(backend, running, {"stopped"})

    after = await backend.metrics()
    assert after.value("lablink_lab_starts_total", system="local") == 3
    assert after.value("lablink_lab_failures_total", system="local", reason="ended") == 1
    assert after.value("lablink_lab_failures_total") == 1
    assert after.value("lablink_lab_stops_total", how="ended") == 1
    assert after.value("lablink_lab_stops_total", how="requested") == 1
    assert after.value("lablink_lab_start_duration_seconds_count") == 2
    assert after.value("lablink_labs") == 0 and after.value("lablink_vo_labs", vo="training") == 0
    assert after.value("lablink_replicas") == 1
    no_person_in_labels(after, "alice", "bob", "carol")


async def test_a_workshops_labs_count_against_its_limit(
    tmp_path: Path, database_url: str, start_backend: BackendFactory
) -> None:
    backend = await start_backend(metrics_site(tmp_path, database_url))
    now = datetime.now(UTC)
    body = {
        "id": "pandas-101", "title": "Pandas 101", "description": "", "system": "local",
        "start": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "options": {}, "max_participants": 12,
    }  # fmt: skip
    async with backend.client("demo") as demo:
        created = await demo.post("/workshops", json=body)
        assert created.status_code == 201, created.text
        code = created.json()["code"]
    async with backend.client("dave") as dave:
        joined = await dave.post("/workshops/pandas-101/join", json={"code": code})
        assert joined.status_code == 200, joined.text
        body = lab_request("dave", "pandas-101", workshop="pandas-101")
        resp = await dave.post("/labs", json=body)
        assert resp.status_code == 202, resp.text
    lab_id = resp.json()["id"]
    await state_of(backend, lab_id, {"running"})
    got = await backend.metrics()
    assert got.value("lablink_workshop_labs", workshop="pandas-101") == 1
    assert got.value("lablink_workshop_labs_limit", workshop="pandas-101") == 12 + 1 + 0
    assert got.value("lablink_labs", workshop="pandas-101", vo="", state="running") == 1
    no_person_in_labels(got, "dave", "demo")
    async with backend.client("dave") as dave:
        await dave.delete(f"/labs/{lab_id}")
    await state_of(backend, lab_id, {"stopped"})
    assert (await backend.metrics()).value("lablink_workshop_labs", workshop="pandas-101") == 0


async def test_metrics_open_only_to_the_metrics_token(backend: RunningBackend) -> None:
    url = f"{backend.url}/metrics"
    async with httpx.AsyncClient(trust_env=False) as http_client:
        nothing = await http_client.get(url)
        assert nothing.status_code == 401 and nothing.headers["www-authenticate"] == "Bearer"
        assert "metrics token" in nothing.json()["detail"]
        for api_token in (backend.tokens["hub"], backend.tokens["admin"]):
            said = await http_client.get(url, headers={"Authorization": f"Bearer {api_token}"})
            assert said.status_code == 401, said.text
        metrics_token = {"Authorization": f"Bearer {backend.tokens['metrics']}"}
        assert (await http_client.get(url, headers=metrics_token)).status_code == 200
        # and it opens nothing else
        api = await http_client.get(f"{backend.url}/api/v1/labs", headers=metrics_token)
        assert api.status_code == 401
    got = await backend.metrics()
    assert {"lablink_labs", "lablink_event_streams", "lablink_replicas"} <= set(got.types)
    assert got.value("process_resident_memory_bytes") > 1e6  # the process' own figures
    assert got.find("python_info")


async def test_metrics_are_off_without_their_token_or_when_the_site_says_so(
    tmp_path: Path, token_env: dict[str, str]
) -> None:
    without = {k: v for k, v in token_env.items() if k != "LABLINK_METRICS_TOKEN"}
    settings = site.settings(site.doc(tmp_path / "a"))
    off = site.settings(site.doc(tmp_path / "b", metrics={"access": "off"}))
    for app in (create_app(settings, without), create_app(off, token_env)):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            token = token_env["LABLINK_METRICS_TOKEN"]
            said = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert said.status_code == 404
        assert "LABLINK_METRICS_TOKEN" in said.text or "metrics.access" in said.text
    with pytest.raises(SettingsError, match="at least 16 characters"):
        create_app(settings, {**token_env, "LABLINK_METRICS_TOKEN": "short"})


async def test_metrics_on_a_port_of_their_own_need_no_token(
    tmp_path: Path, database_url: str, start_backend: BackendFactory
) -> None:
    port = free_port()
    settings = site.settings(
        site.doc(tmp_path / "state", database_url,
                 metrics={"access": "port", "ports": {"backend": port}})
    )  # fmt: skip
    backend = await start_backend(settings)
    got = await scrape(f"http://127.0.0.1:{port}/metrics", None)
    assert "lablink_labs" in got.types
    async with httpx.AsyncClient(trust_env=False) as http_client:
        own = {"Authorization": f"Bearer {backend.tokens['metrics']}"}
        on_api = await http_client.get(f"{backend.url}/metrics", headers=own)
        assert on_api.status_code == 404 and f"port {port}" in on_api.json()["detail"]
        elsewhere = await http_client.get(f"http://127.0.0.1:{port}/api/v1/labs")
        assert elsewhere.status_code == 404
    await backend.stop()
    with pytest.raises(httpx.ConnectError):  # closed with the service
        await scrape(f"http://127.0.0.1:{port}/metrics", None)


class Answers(http.server.ThreadingHTTPServer):
    """A peer that answers 200, or 503 at /broken."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(503 if self.path == "/broken" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def peer() -> Iterator[Answers]:
    server = Answers()
    yield server
    server.shutdown()
    server.server_close()


async def test_calls_to_peers_are_timed_per_peer_and_labs_are_not(peer: Answers) -> None:
    closed = free_port()
    systems = {
        "local": site.local_system(),
        "hpc": site.unicore_catalog_system(url=f"http://127.0.0.1:{peer.port}/SITE/rest/core"),
    }
    settings = site.settings(
        site.doc(None, systems=systems, tunnel_service={"url": f"http://127.0.0.1:{closed}"})
    )
    metrics = BackendMetrics(settings)
    async with turn_taking_client(observe=metrics.call, timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{peer.port}/SITE/rest/core")).is_success
        assert (await client.get(f"http://localhost:{peer.port}/x")).is_success  # not the peer
        assert (await client.get(f"http://127.0.0.1:{peer.port}/broken")).status_code == 503
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{closed}/api/v1/tunnels")
    from prometheus_client import generate_latest

    got = Scrape(generate_latest(metrics.registry).decode())
    assert got.value("lablink_driver_call_duration_seconds_count", peer="unicore") == 2
    assert got.value("lablink_driver_call_errors_total", peer="unicore", error="status_5xx") == 1
    calls = "lablink_driver_call_duration_seconds_count"
    assert got.value(calls, peer="tunnel", method="POST") == 1
    assert got.value("lablink_driver_call_errors_total", peer="tunnel", error="transport") == 1
    assert {s.labels["peer"] for s in got.find("lablink_driver_call_duration_seconds_count")} == {
        "unicore",
        "tunnel",
    }


async def test_one_log_line_per_transition_with_the_handle_and_never_a_token(
    backend: RunningBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lablink")
    async with backend.client("alice") as alice:
        resp = await alice.post("/labs", json=lab_request("alice", "logged"))
        lab_id = resp.json()["id"]
        await wait_state(alice, lab_id, {"running"})
        await alice.delete(f"/labs/{lab_id}")
        await wait_state(alice, lab_id, {"stopped"})
    moves = [r for r in caplog.records if r.name == "lablink.backend.transitions"]
    assert [(r.from_state, r.to_state) for r in moves] == [  # type: ignore[attr-defined]
        ("accepted", "submitted"),
        ("submitted", "starting"),
        ("starting", "running"),
        ("running", "stopping"),
        ("stopping", "stopped"),
    ]
    running = moves[2]
    assert running.lab == lab_id and running.user == "alice"  # type: ignore[attr-defined]
    assert running.system == "local" and running.handle["pid"] > 0  # type: ignore[attr-defined]
    said = running.getMessage()
    assert said.startswith(f"lab {lab_id[:8]} (alice/logged) on local: starting -> running port=")
    assert f"pid={running.handle['pid']}" in said  # type: ignore[attr-defined]
    everything = caplog.text + "".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "secret-hub-api-token-alice" not in everything
    for token in backend.tokens.values():
        assert token not in everything


def test_json_logs_are_one_object_a_line_with_the_labs_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = []
        _setup_logging("info", "json")
        logging.getLogger("lablink.backend.transitions").info(
            "lab 1234abcd (alice/-) on hpc: queued -> starting job=https://u/jobs/1",
            extra={"lab": "1234abcd-x", "user": "alice", "system": "hpc", "to_state": "starting",
                   "handle": {"job": "https://u/jobs/1"}},
        )  # fmt: skip
        logging.getLogger("lablink.backend").warning(
            "a peer said: Authorization: Bearer abcdefghijklmnop1234 and token=s3cr3t-value"
        )
        try:
            raise ValueError("broken\nacross lines")
        except ValueError:
            logging.getLogger("lablink.backend").exception("it broke")
    finally:
        root.handlers, level = saved
        root.setLevel(level)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "lablink.backend.transitions"
    assert first["lab"] == "1234abcd-x" and first["handle"] == {"job": "https://u/jobs/1"}
    assert first["time"].endswith("Z") and "message" in first
    assert "abcdefghijklmnop1234" not in second["message"] and "s3cr3t" not in second["message"]
    assert "Bearer [hidden]" in second["message"]
    assert third["exception"].startswith("Traceback") and "ValueError: broken" in third["exception"]


async def test_event_streams_are_counted_while_open(backend: RunningBackend) -> None:
    async with backend.client("alice") as alice:
        resp = await alice.post("/labs", json=lab_request("alice", "streamed"))
        lab_id = resp.json()["id"]
        await wait_state(alice, lab_id, {"running"})
        async with alice.stream("GET", f"/labs/{lab_id}/events/stream") as stream:
            assert stream.status_code == 200
            await asyncio.sleep(0.2)
            assert (await backend.metrics()).value("lablink_event_streams") == 1
        await alice.delete(f"/labs/{lab_id}")
        await wait_state(alice, lab_id, {"stopped"})
    for _ in range(50):
        if (await backend.metrics()).value("lablink_event_streams") == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the closed stream is still counted")


def test_the_log_format_defaults_to_the_variable_a_pod_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABLINK_LOG_FORMAT", "json")
    for command in (["backend", "--site", "s.yaml"], ["tunnel", "--site", "s.yaml"], ["up"]):
        assert build_parser().parse_args(command).log_format == "json"
    given = build_parser().parse_args(["backend", "--site", "s", "--log-format", "text"])
    assert given.log_format == "text"  # the option wins
    monkeypatch.setenv("LABLINK_LOG_FORMAT", "yaml")  # not a format: the default
    assert build_parser().parse_args(["backend", "--site", "s.yaml"]).log_format == "text"


def test_lablink_up_gives_an_admin_and_the_metrics_token_and_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default walk: `lablink up` names the hub's admin with a password of its own
    (the demo password does not open an admin's account), keeps the scraper's token in
    the state directory, hands it to the services that serve /metrics (never to the hub),
    and prints both."""
    from backend import embedded

    for name in ("LABLINK_HUB_ADMINS", "LABLINK_DEMO_ADMIN_PASSWORD", "LABLINK_OIDC_ISSUER",
                 "LABLINK_METRICS_TOKEN", "LABLINK_DEMO_PASSWORD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(embedded, "demo_local", lambda system: None)  # no account made
    args = build_parser().parse_args(["up", "--state-dir", str(tmp_path), "--no-tunnel"])
    up = embedded.Embedded(args, None, Path(embedded.__file__).parent / "data" / "embedded.yaml")
    up._write_site()
    services = up._services()
    hub, backend_env = services["hub"].env, services["backend"].env
    assert hub["LABLINK_HUB_ADMINS"] == "admin"
    admin_password = hub["LABLINK_DEMO_ADMIN_PASSWORD"]
    assert len(admin_password) >= 32 and admin_password != hub["LABLINK_DEMO_PASSWORD"]
    token_file = tmp_path / "secrets" / "metrics_token"
    assert (token_file.stat().st_mode & 0o777) == 0o600
    assert backend_env["LABLINK_METRICS_TOKEN"] == token_file.read_text().strip()
    assert "LABLINK_METRICS_TOKEN" not in hub and "LABLINK_DEMO_ADMIN_PASSWORD" not in backend_env
    assert services["backend"].argv[-4:] == ["--log-level", "info", "--log-format", "text"]
    up.say_admins()
    up.say_metrics()
    said = capsys.readouterr().out
    assert f"log in as 'admin' with the password {admin_password}" in said
    assert "/hub/lablink/admin" in said
    assert f'curl -H "Authorization: Bearer $(cat {token_file})" http://127.0.0.1:8010/metrics' in (
        said
    )
