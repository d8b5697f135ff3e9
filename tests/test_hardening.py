"""What the security review of issue 13 found, each shown closed: admin powers only
for tokens the site trusts with them, bounded reads of what labs send, request
bodies of at most 1 MiB on every service, a cap on event streams per person,
TLS to remote peers, state at rest that is the service's alone, and labs that
never run as root or, with a real login, in one shared account."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from traitlets import TraitError

from backend import embedded
from backend.settings import SettingsError, normalize_database_url
from backend.store import Store
from backend.systems.local.driver import LocalDriver
from backend.systems.unicore.client import Credentials, UnicoreClient
from devsite import DevsiteConfig, User
from devsite.app import create_app as devsite_app
from spawner.oidc import LablinkOIDCAuthenticator
from spawner.spawner import LablinkSpawner
from tests.helpers import site
from tests.helpers.api import (
    BackendFactory,
    RunningBackend,
    lab_request,
    stop_everything,
    wait_state,
)
from tests.helpers.labs import assert_error, fakelab_command, process_environment
from tests.helpers.slurm import SYSTEM_PYTHON
from tunnel.app import create_app as tunnel_app
from userlab_manager.app import create_app as userlab_app

MIB = 1024 * 1024


# -- admin powers -----------------------------------------------------------------


async def test_a_hub_token_acts_as_an_admin_only_where_the_site_lets_it(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    tokens = [{**site.TOKENS[0], "admin_header": True}, site.TOKENS[1]]
    backend = await start_backend(site.settings(site.doc(tmp_path, database_url, tokens=tokens)))
    async with backend.client("alice") as alice, backend.client("carol") as carol:
        lab = (await alice.post("/labs", json=lab_request("alice"))).json()
        assert (await carol.get(f"/labs/{lab['id']}")).status_code == 404  # not hers
        carol.headers["X-Lablink-Admin"] = "true"
        seen = await carol.get(f"/labs/{lab['id']}")
        assert seen.status_code == 200 and seen.json()["handle"] is not None
    await stop_everything(backend)


# -- bounded reads of what labs send ------------------------------------------------


class EndlessServer:
    """An HTTP server that answers 200 and then sends bytes for ever (ignoring any
    Range); counts what it managed to send."""

    def __init__(self) -> None:
        self.sent = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        chunk = b"x" * 65536
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def within_memory(call: Callable[[], Any], most: int) -> Any:
    tracemalloc.start()
    try:
        result = await asyncio.wait_for(call(), 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < most, f"{peak} bytes at the peak"
    return result


async def test_a_lab_that_answers_its_probe_with_an_endless_body_costs_nothing() -> None:
    """Before, the probe read the whole answer: a lab could hold the backend's memory."""
    endless = EndlessServer()
    async with endless as url, httpx.AsyncClient(trust_env=False) as http:
        driver = LocalDriver(http)
        assert await within_memory(lambda: driver.answers(url + "/user/a/api"), 4 * MIB)
    assert endless.sent < 64 * MIB


async def test_a_lab_file_of_endless_size_is_read_to_its_limit_and_refused() -> None:
    """A site that ignores the Range of ``lab.json`` (or a 20 GB file) is read up to the
    limit and no further."""
    endless = EndlessServer()
    async with endless as url, httpx.AsyncClient(trust_env=False) as http:
        client = UnicoreClient(http, Credentials("token"), retry_for=1)
        data = await within_memory(
            lambda: client.read_file(url + "/storages/j1", "lab.json", length=4096), 4 * MIB
        )
    assert data is not None and len(data) == 4097  # one more: the reader sees it is too long
    assert endless.sent < 64 * MIB


# -- request bodies --------------------------------------------------------------------


def services(tmp_path: Path) -> dict[str, tuple[FastAPI, str]]:
    """Each service beside the backend, and a path where it takes a body."""
    settings = site.settings(site.doc(tmp_path / "state"))
    devsite = DevsiteConfig(
        users={"lablink": User("lablink", "a-password-of-the-devsite", ("lablink",))},
        workdir=tmp_path / "devsite",
    )
    return {
        "tunnel service": (tunnel_app(settings, "t" * 32), "/api/v1/tunnels"),
        "UserLab Manager": (userlab_app(settings, "t" * 32, None), "/api/v1/labs"),  # type: ignore[arg-type]
        "development site": (devsite_app(devsite), "/DEVSITE/rest/core/jobs"),
    }


async def chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 65536):
        yield b"[" + b" " * 65534 + b"]"


@pytest.mark.parametrize("service", ["tunnel service", "UserLab Manager", "development site"])
async def test_every_service_refuses_a_body_over_one_mib(tmp_path: Path, service: str) -> None:
    app, path = services(tmp_path)[service]
    transport = httpx.ASGITransport(app=app)
    login = ("lablink", "a-password-of-the-devsite")  # the site reads bodies once logged in
    async with httpx.AsyncClient(transport=transport, base_url="http://svc", auth=login) as client:
        said = await client.post(path, content=b"{" + b" " * (2 * MIB) + b"}")
        assert said.status_code == 413, said.text
        assert "1024 KiB" in said.text
        streamed = await client.post(path, content=chunks(4 * MIB))
        assert streamed.status_code == 413, streamed.text


async def test_the_backend_refuses_a_body_over_one_mib_before_reading_it(
    backend: RunningBackend,
) -> None:
    async with backend.client() as hub:
        said = await hub.post("/labs", content=b" " * (2 * MIB))
        assert_error(said, 413, "1024 KiB")
        streamed = await hub.post("/labs", content=chunks(8 * MIB))
        assert_error(streamed, 413, "1024 KiB")
        assert (await hub.get("/labs")).json() == []


# -- event streams per person -------------------------------------------------------------


async def test_a_person_has_at_most_so_many_event_streams(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    settings = site.settings(site.doc(tmp_path, database_url, event_streams_per_user=2))
    backend = await start_backend(settings)
    async with backend.client() as hub, backend.client("bob") as bob:
        lab = (await hub.post("/labs", json=lab_request("alice"))).json()
        await wait_state(hub, lab["id"], {"running"})
        url = f"/labs/{lab['id']}/events/stream"
        async with hub.stream("GET", url) as one, hub.stream("GET", url) as two:
            assert one.status_code == two.status_code == 200
            third = await hub.get(url)
            assert_error(third, 429, "'alice' has 2 event streams open")
            assert third.headers["retry-after"] == "10"
            # somebody else's streams are counted apart
            other = (await bob.post("/labs", json=lab_request("bob"))).json()
            async with bob.stream("GET", f"/labs/{other['id']}/events/stream") as hers:
                assert hers.status_code == 200
        await asyncio.sleep(0.2)
        async with hub.stream("GET", url) as again:  # closed ones count no more
            assert again.status_code == 200
    await stop_everything(backend)


# -- TLS to remote peers -----------------------------------------------------------------


@pytest.mark.parametrize("key", ["tunnel_service", "userlab_manager"])
def test_a_remote_service_must_be_reached_over_tls(tmp_path: Path, key: str) -> None:
    document = site.doc(tmp_path, **{key: {"url": "http://tunnel.example.org:8020"}})
    with pytest.raises(SettingsError, match=f"{key}.url: .*use https://"):
        site.settings(document)
    document[key]["url"] = "https://tunnel.example.org:8020"
    assert site.settings(document)
    document[key]["url"] = "http://127.0.0.1:8020"  # this machine: no network between
    assert site.settings(document)


@pytest.mark.parametrize("key", ["tunnel_service", "userlab_manager"])
@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("lablink-tunnel", True),  # a Service of the namespace (the Helm chart's)
        ("lablink-tunnel.lablink.svc", True),
        ("lablink-tunnel.lablink.svc.cluster.local", True),
        ("tunnel.example.org", False),
        ("lablink-tunnel.lablink", False),
        ("svc.example.org", False),
        ("Tunnel_1", False),
    ],
)
def test_plain_http_to_a_service_of_the_cluster(
    tmp_path: Path, key: str, host: str, allowed: bool
) -> None:
    document = site.doc(tmp_path, **{key: {"url": f"http://{host}:8020"}})
    if allowed:
        assert site.settings(document)
    else:
        with pytest.raises(SettingsError, match=f"{key}.url: .*use https://"):
            site.settings(document)


def test_the_hub_reaches_the_backend_and_the_provider_over_tls() -> None:
    with pytest.raises(TraitError, match="use https://"):
        LablinkSpawner(backend_url="http://backend.example.org:8010")
    assert LablinkSpawner(backend_url="https://backend.example.org").backend_url
    assert LablinkSpawner(backend_url="http://lablink-backend:8010").backend_url  # in-cluster
    with pytest.raises(TraitError, match="use https://"):
        LablinkOIDCAuthenticator(issuer="http://login.example.org/oauth2")
    assert LablinkOIDCAuthenticator(issuer="http://127.0.0.1:9000").issuer


# -- state at rest -----------------------------------------------------------------------


async def test_the_state_directory_is_the_backends_alone(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    await start_backend(site.settings(site.doc(state, database_url)))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_the_crypt_key_lives_apart_from_the_hubs_database(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "crypt_key").write_text("0123abcd\n")  # where it was kept before
    assert embedded.crypt_key(tmp_path / "secrets" / "crypt_key") == "0123abcd"
    assert not (tmp_path / "hub" / "crypt_key").exists()
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    fresh = embedded.crypt_key(tmp_path / "other" / "crypt_key")
    assert len(fresh) == 64
    assert stat.S_IMODE((tmp_path / "other" / "crypt_key").stat().st_mode) == 0o600


async def test_text_with_nul_is_stored_on_postgresql(postgres_url: str) -> None:
    """PostgreSQL refuses NUL in text: before, a lab that printed one and was stopped
    stayed 'stopping' for ever."""
    from backend.db import create_engine, migrate
    from backend.states import LabState

    engine = create_engine(normalize_database_url(postgres_url))
    await migrate(engine)
    try:
        store = Store(engine)
        lab = await store.create_lab(
            user_name="alice", server_name="", system="local", options={}, vo=None, message="."
        )
        await store.save_handle(lab.id, {"host\x00": "node\x001"})
        stopped = await store.record(
            lab.id, LabState.STOPPED, "bye\x00", detail="out\x00put \udcff", allowed_from=None
        )
        assert stopped.message == "bye" and stopped.handle == {"host": "node1"}
        assert (await store.events(lab.id))[-1].detail == "output \ufffd"
    finally:
        await engine.dispose()


# -- labs on this machine: never root, never one account for everybody ---------------------


def test_a_local_system_in_one_account_is_refused_with_a_real_login(tmp_path: Path) -> None:
    for run_as in ("", "lablink-demo"):
        document = site.doc(tmp_path, systems={"local": site.local_system(run_as=run_as)})
        document["login"] = "oidc"
        with pytest.raises(SettingsError, match=r"systems\.local\.run_as: every lab runs as"):
            site.settings(document)
    document = site.doc(tmp_path, systems={"local": site.local_system(run_as="person")})
    document["login"] = "oidc"
    assert site.settings(document)


def test_the_embedded_default_with_oidc_offers_no_shared_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABLINK_OIDC_ISSUER", "https://login.example.org/oauth2")
    document = embedded.embedded_site(
        Path(embedded.__file__).parent / "data" / "embedded.yaml", 8040
    )
    assert document["login"] == "oidc"
    assert all(s.get("run_as") in (None, "person") for s in document["systems"].values())
    assert document["default_system"] in document["systems"]
    assert site.settings({**document, "state_dir": "/tmp/x"})


def test_lablink_up_as_root_says_which_systems_run_labs_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded HPC systems run their jobs in the account that runs `lablink up`; as
    root JupyterLab needs --allow-root there, which is never added in silence."""
    import yaml

    from backend.cli import build_parser

    monkeypatch.setattr(embedded.os, "geteuid", lambda: 0)
    monkeypatch.setattr(embedded, "demo_local", lambda system: None)  # no account made
    args = build_parser().parse_args(["up", "--state-dir", str(tmp_path), "--no-tunnel"])
    up = embedded.Embedded(args, None, Path(embedded.__file__).parent / "data" / "embedded.yaml")
    up._write_site()
    said = capsys.readouterr().out
    written = yaml.safe_load(Path(str(up.site)).read_text())
    assert "--allow-root" in written["systems"]["hpc"]["lab_args"]
    assert "labs of system 'hpc' run as root" in said, said
    assert "lab_args has --allow-root in the site file" in said


def uids_of(pid: int) -> list[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return [int(uid) for uid in line.split()[1:]]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root starts labs as other accounts")
async def test_a_lab_runs_as_the_persons_own_account_with_a_clean_environment(
    start_backend: BackendFactory, tmp_path: Path, database_url: str, token_env: dict[str, str]
) -> None:
    os.chmod(tmp_path, 0o755)
    # Debian's Python: the person's account may run it (not the tests' venv under /root)
    local = site.local_system(
        run_as="person", allow_root=False, command=fakelab_command(SYSTEM_PYTHON)
    )
    document = site.doc(tmp_path / "state", database_url, systems={"local": local})
    document["login"] = "oidc"
    backend = await start_backend(site.settings(document))
    account = pwd.getpwnam("lablink-alice")
    async with backend.client("lablink-alice") as hub:
        lab = (await hub.post("/labs", json=lab_request("lablink-alice"))).json()
        running = await wait_state(hub, lab["id"], {"running", "failed"})
        assert running["state"] == "running", running["message"]
        async with backend.client(None, admin_token=True) as admin:
            handle = (await admin.get(f"/labs/{lab['id']}")).json()["handle"]
        assert uids_of(handle["pid"]) == [account.pw_uid] * 4  # real, effective, saved, fs
        env = process_environment(handle["pid"])
        assert env["HOME"] == account.pw_dir and env["USER"] == "lablink-alice"
        assert not set(env) & set(token_env)  # none of the backend's secrets

        # nobody in one shared account: a person without a Unix account gets a sentence
        async with backend.client("nobody-here") as stranger:
            other = (await stranger.post("/labs", json=lab_request("nobody-here"))).json()
            failed = await wait_state(stranger, other["id"], {"failed"})
            assert "no Unix account 'nobody-here'" in failed["message"]
    await stop_everything(backend)


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is of root")
async def test_a_lab_never_runs_as_root_unless_the_site_says_so(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    local = site.local_system(allow_root=False)
    backend = await start_backend(
        site.settings(site.doc(tmp_path, database_url, systems={"local": local}))
    )
    async with backend.client() as hub:
        lab = (await hub.post("/labs", json=lab_request())).json()
        failed = await wait_state(hub, lab["id"], {"failed"})
        assert "would run your lab as root" in failed["message"]


def test_pod_logs_are_asked_for_with_a_byte_limit() -> None:
    """The official client asks the API server for at most LOG_BYTES of a lab's log
    (``limitBytes``), so a lab that prints without end costs the manager nothing."""
    import http.server
    import threading

    from kubernetes import client as k8s

    from userlab_manager.kube import LOG_BYTES, Kube

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b"last words\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = k8s.Configuration(host=f"http://127.0.0.1:{server.server_port}")
        kube = Kube(k8s.ApiClient(config))
        tail = asyncio.run(kube.log_tail("labs", "lab-1", 20))
    finally:
        server.shutdown()
    assert tail == "last words\n"
    [path] = asked
    assert path.startswith("/api/v1/namespaces/labs/pods/lab-1/log?")
    assert f"limitBytes={LOG_BYTES}" in path and "tailLines=20" in path


# -- entitlements: only the site's namespace and authority ---------------------------------


RES = "urn:{ns}:res:hpc:training2026:act:alice1{auth}"


def test_only_entitlements_of_the_sites_namespace_and_authority_give_accounts() -> None:
    """Before, the default pattern took any namespace and authority: a community of the
    same AAI proxy could hand out accounts of this site."""
    from backend.vos import IdentitySettings, entitlement_grants

    ours = RES.format(ns="geant:h-df.de", auth="#login.helmholtz.de")
    others = [
        RES.format(ns="geant:evil.example", auth="#login.helmholtz.de"),
        RES.format(ns="geant:h-df.de", auth="#idp.evil.example"),
        RES.format(ns="geant:h-df.de", auth=""),
        RES.format(ns="geant:h-df.de:x", auth="#login.helmholtz.de"),
    ]
    identity = IdentitySettings(namespace="geant:h-df.de", authority="login.helmholtz.de")
    grants = entitlement_grants(identity.pattern(), frozenset([ours, *others]))
    assert grants.accounts == {"hpc": ["alice1"]}
    for other in others:
        assert entitlement_grants(identity.pattern(), frozenset([other])).accounts == {}
    # a site that names no namespace trusts no entitlement
    assert IdentitySettings().pattern() is None
    assert entitlement_grants(None, frozenset([ours])).accounts == {}


def test_only_group_entitlements_of_the_hubs_namespace_make_hub_groups() -> None:
    group = "urn:geant:h-df.de:group:ws2026"
    anchored = LablinkOIDCAuthenticator(
        entitlement_namespace="geant:h-df.de", entitlement_authority="login.helmholtz.de"
    )
    claims = [
        f"{group}#login.helmholtz.de",
        "urn:geant:evil.example:group:admins#login.helmholtz.de",
        f"{group}:sub#idp.evil.example",
    ]
    assert anchored.groups_from({}, claims) == ["ws2026"]
    assert LablinkOIDCAuthenticator().groups_from({}, claims) == []  # nothing trusted
