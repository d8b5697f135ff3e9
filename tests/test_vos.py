"""VOs: membership, the catalog cut to the active VO, and atomic admission.

The backend runs as a real HTTP server on SQLite and on PostgreSQL; labs are
fakelab processes. The admission test sends 50 start requests at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.catalog import validate_options
from backend.settings import Settings, SettingsError
from tests.helpers import site
from tests.helpers.api import (
    BackendFactory,
    RunningBackend,
    lab_request,
    stop_and_wait,
    stop_everything,
    wait_state,
)
from tests.helpers.labs import assert_error, fakelab_processes

pytestmark = [pytest.mark.quota, pytest.mark.integration]

ENTITLEMENT = "urn:geant:h-df.de:res:hpc:training2026:act:alice1#login.helmholtz.de"


@pytest.fixture
def token_env(token_env: dict[str, str]) -> dict[str, str]:
    return {**token_env, "UNICORE_PW": "not-used-in-these-tests"}


def vo_site(tmp_path: Path, database_url: str, vos: dict[str, Any], **extra: Any) -> Settings:
    systems = {
        "local": site.local_system(),
        "hpc": site.unicore_catalog_system(access=[]),
        "failing": {"kind": "local", "command": ["false"], "start_timeout": 10},
    }
    doc = site.doc(tmp_path / "state", database_url, systems=systems, vos=vos, **extra)
    return site.settings(doc, "site.yaml")


WORKSHOP = {
    "display_name": "Workshop 2026",
    "members": {"groups": ["workshop"], "entitlements": ["urn:geant:h-df.de:group:ws2026#*"]},
    "systems": ["local", "hpc", "failing"],
    "partitions": {"hpc": ["batch"]},
    "quota": {"labs": 10, "labs_per_user": 2, "nodes": 2, "runtime": 60},
}
RESEARCH = {"members": {"users": ["alice"]}, "systems": ["hpc"]}


def start_body(user: str, server: str = "", **options: Any) -> dict[str, Any]:
    body = lab_request(user, server, options=options)
    body["user"]["groups"] = ["workshop"]
    return body


async def post_lab(backend: RunningBackend, body: dict[str, Any]) -> httpx.Response:
    async with backend.client(body["user"]["name"]) as client:
        return await client.post("/labs", json=body)


# -- atomic admission ----------------------------------------------------------------


async def test_fifty_starts_at_once_admit_exactly_the_room_left(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    settings = vo_site(tmp_path, database_url, {"workshop": WORKSHOP})
    backend = await start_backend(settings)
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(
        base_url=f"{backend.url}/api/v1", timeout=60, trust_env=False, limits=limits
    ) as http:

        async def start(i: int) -> httpx.Response:
            headers = {
                "Authorization": f"Bearer {backend.tokens['hub']}",
                "X-Lablink-User": f"user{i}",
            }
            return await http.post("/labs", json=start_body(f"user{i}"), headers=headers)

        answers = await asyncio.gather(*(start(i) for i in range(50)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(202) == 10, statuses
    assert statuses.count(429) == 40, statuses
    for refused in (r for r in answers if r.status_code == 429):
        assert_error(refused, 429, "VO Workshop 2026", "limit of 10 active labs")
        assert refused.headers["retry-after"] == "60"
    async with backend.client(None, admin_token=True) as admin:
        stored = (await admin.get("/labs")).json()
    assert len(stored) == 10 and {lab["vo"] for lab in stored} == {"workshop"}
    await stop_everything(backend)


async def test_quota_is_released_when_a_lab_stops_or_fails(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    one = {**WORKSHOP, "quota": {"labs": 1}}
    backend = await start_backend(vo_site(tmp_path, database_url, {"workshop": one}))
    first = await post_lab(backend, start_body("alice"))
    assert first.status_code == 202, first.text
    assert_error(await post_lab(backend, start_body("bob")), 429, "VO Workshop 2026", "1")
    async with backend.client("alice") as alice:
        await stop_and_wait(alice, first.json()["id"])
    failing = await post_lab(backend, start_body("bob", system="failing"))
    assert failing.status_code == 202, failing.text
    async with backend.client("bob") as bob:
        lab = await wait_state(bob, failing.json()["id"], {"failed", "stopped"})
    assert lab["state"] == "failed"
    again = await post_lab(backend, start_body("carol"))  # the failed lab left room
    assert again.status_code == 202, again.text
    await stop_everything(backend)


async def test_a_person_has_at_most_labs_per_user_in_a_vo(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(vo_site(tmp_path, database_url, {"workshop": WORKSHOP}))
    for server in ("a", "b"):
        assert (await post_lab(backend, start_body("alice", server))).status_code == 202
    refused = await post_lab(backend, start_body("alice", "c"))
    assert_error(refused, 429, "You have 2 active labs in VO Workshop 2026", "per person")
    assert (await post_lab(backend, start_body("bob"))).status_code == 202  # others still can
    await stop_everything(backend)


async def test_the_first_event_shows_the_vos_quota(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(vo_site(tmp_path, database_url, {"workshop": WORKSHOP}))
    resp = await post_lab(backend, start_body("alice"))
    assert resp.status_code == 202
    async with backend.client("alice") as alice:
        events = (await alice.get(f"/labs/{resp.json()['id']}/events")).json()
        assert events[0]["message"] == (
            "Lab accepted for system Test machine. VO Workshop 2026: 1 of 10 labs in use; "
            "yours: 1 of 2."
        )
        await stop_and_wait(alice, resp.json()["id"])


# -- membership and refusals ----------------------------------------------------------


async def test_a_vo_the_person_is_not_in_is_refused_and_nothing_stored(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    vos = {"workshop": WORKSHOP, "research": RESEARCH}
    backend = await start_backend(vo_site(tmp_path, database_url, vos))
    body = start_body("bob")
    body["vo"] = "research"
    assert_error(
        await post_lab(backend, body), 403, "not a member of VO research", "your VOs: Workshop 2026"
    )
    body["vo"] = "Research; rm -rf /"
    assert (await post_lab(backend, body)).status_code == 422
    async with backend.client("bob") as bob:
        assert_error(await bob.put("/users/bob/vo", json={"vo": "research"}), 403, "research")
    nobody = lab_request("mallory")  # in no VO at all
    detail = assert_error(await post_lab(backend, nobody), 403, "not a member of any VO")
    assert "ask" in detail
    async with backend.client("mallory") as mallory:
        catalog = (await mallory.get("/catalog")).json()
    assert catalog["systems"] == [] and catalog["vos"] == [] and catalog["vo"] is None
    async with backend.client(None, admin_token=True) as admin:
        assert (await admin.get("/labs")).json() == []
    assert fakelab_processes() == []


async def test_a_hub_token_cannot_act_for_another_person(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(vo_site(tmp_path, database_url, {"workshop": WORKSHOP}))
    async with backend.client("mallory") as mallory:
        forged = await mallory.post("/labs", json=start_body("alice"))
        assert_error(forged, 403, "acts for 'mallory'")
        identity = {"groups": ["workshop"], "entitlements": []}
        assert_error(await mallory.put("/users/alice", json=identity), 403, "another user")
        assert_error(await mallory.put("/users/alice/vo", json={"vo": "workshop"}), 403)
        assert_error(await mallory.get("/users/alice"), 403)
    async with backend.client(None, admin_token=True) as admin:
        assert (await admin.get("/labs")).json() == []


async def test_options_beyond_the_vos_maxima_are_refused(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(vo_site(tmp_path, database_url, {"workshop": WORKSHOP}))
    body = start_body("alice", system="hpc", nodes=3)
    body["user"]["entitlements"] = [ENTITLEMENT]
    assert_error(
        await post_lab(backend, body),
        422,
        "Nodes: 3 is more than partition batch allows in VO Workshop 2026; choose 1 to 2.",
        field="nodes",
    )
    body["options"] = {"system": "hpc", "runtime": 90}
    assert_error(await post_lab(backend, body), 422, "choose 10 to 60 minutes", field="runtime")
    body["options"] = {"system": "hpc", "partition": "gpus"}
    assert_error(
        await post_lab(backend, body),
        422,
        "Partition: 'gpus' is not offered on system Test HPC in VO Workshop 2026",
    )
    research = start_body("alice", system="local")
    research["vo"] = "workshop"
    research["options"] = {"system": "nope"}
    assert_error(await post_lab(backend, research), 422, "System: ", field="system")
    async with backend.client(None, admin_token=True) as admin:
        assert (await admin.get("/labs")).json() == []


# -- catalog and the active VO ---------------------------------------------------------


async def test_catalog_follows_the_active_vo_and_shows_used_and_limit(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    vos = {"workshop": WORKSHOP, "research": RESEARCH}
    backend = await start_backend(vo_site(tmp_path, database_url, vos))
    async with backend.client("alice") as alice:
        identity = {"groups": ["workshop"], "entitlements": [ENTITLEMENT]}
        me = (await alice.put("/users/alice", json=identity)).json()
        assert me["vo"] == "workshop" and [v["name"] for v in me["vos"]] == ["workshop", "research"]
        body = start_body("alice")
        body["user"]["entitlements"] = [ENTITLEMENT]  # each start carries the whole identity
        lab = await post_lab(backend, body)
        assert lab.status_code == 202
        catalog = (await alice.get("/catalog")).json()
        assert catalog["vo"] == "workshop"
        assert [s["name"] for s in catalog["systems"]] == ["local", "hpc", "failing"]
        [hpc] = [s for s in catalog["systems"] if s["name"] == "hpc"]
        assert hpc["accounts"] == ["alice1"] and hpc["projects"] == ["training2026"]
        assert [p["name"] for p in hpc["partitions"]] == ["batch"]
        assert hpc["partitions"][0]["nodes"] == {"min": 1, "max": 2, "default": 1}
        quota = catalog["vos"][0]["quota"]
        assert quota["labs"] == {"used": 1, "limit": 10}
        assert quota["labs_per_user"] == {"used": 1, "limit": 2}
        assert quota["per_lab"]["nodes"] == 2 and quota["per_lab"]["runtime"] == 60

        me = (await alice.put("/users/alice/vo", json={"vo": "research"})).json()
        assert me["vo"] == "research"
        catalog = (await alice.get("/catalog")).json()
        assert [s["name"] for s in catalog["systems"]] == ["hpc"]
        [hpc] = catalog["systems"]
        assert [p["name"] for p in hpc["partitions"]] == ["batch", "gpus", "login"]
        assert catalog["vos"][1]["active"] and catalog["vos"][1]["quota"]["labs"]["limit"] is None
        # a new lab goes to the active VO, where the local system is not offered
        refused = await post_lab(
            backend, {**body, "server_name": "x", "options": {"system": "local"}}
        )
        assert_error(refused, 422, "not offered in VO research", field="system")
        await stop_and_wait(alice, lab.json()["id"])


async def test_membership_by_entitlement_pattern(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(vo_site(tmp_path, database_url, {"workshop": WORKSHOP}))
    async with backend.client("dave") as dave:
        outsider = {"groups": [], "entitlements": ["urn:geant:h-df.de:group:other#x"]}
        assert (await dave.put("/users/dave", json=outsider)).json()["vos"] == []
        member = {"groups": [], "entitlements": ["urn:geant:h-df.de:group:ws2026#login.x"]}
        assert (await dave.put("/users/dave", json=member)).json()["vo"] == "workshop"
        long = {"groups": [], "entitlements": ["x" * 513]}
        assert (await dave.put("/users/dave", json=long)).status_code == 422


def test_vos_naming_unknown_systems_partitions_or_flavors_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    for vo, where in (
        ({"systems": ["juwels"]}, "vos.x.systems.0"),
        ({"partitions": {"hpc": ["nope"]}}, "vos.x.partitions.hpc.0"),
        ({"partitions": {"local": ["batch"]}}, "vos.x.partitions.local"),
        ({"flavors": {"hpc": ["small"]}}, "vos.x.flavors.hpc"),
        ({"quota": {"labs": -1}}, "vos.x.quota.labs"),
        ({"members": {"users": "alice"}}, "vos.x.members.users"),
    ):
        with pytest.raises(SettingsError) as err:
            vo_site(tmp_path, url, {"x": vo})
        assert where in str(err.value) and "line" in str(err.value), str(err.value)
    with pytest.raises(SettingsError, match="named groups system, project, account"):
        vo_site(tmp_path, url, {}, identity={"entitlement_pattern": "^urn:(.*)$"})


def test_the_form_names_the_vo_and_its_quota_or_says_there_is_none() -> None:
    from spawner.form import options_form_html, options_from_form

    assert "not a member of any VO" in options_form_html(
        {"systems": [], "vos": [], "vo": None, "default_system": "local"}
    )
    vo = {
        "name": "workshop",
        "display_name": "Workshop <2026>",
        "active": True,
        "quota": {
            "labs": {"used": 3, "limit": 10},
            "labs_per_user": {"used": 1, "limit": None},
            "per_lab": {"nodes": 2, "gpus": None, "runtime": 60, "cpu": None, "memory": None},
        },
    }
    system = {"name": "local", "kind": "local", "display_name": "Here"}
    html = options_form_html({"systems": [system], "vos": [vo], "default_system": "local"})
    assert "VO Workshop &lt;2026&gt;" in html and "3 of 10 labs in use" in html
    assert "yours 1 (no limit)" in html
    assert "per lab up to" not in html  # a system's fields say what a lab may have there
    assert '<input type="hidden" name="vo" value="workshop">' in html
    assert options_from_form({"vo": ["workshop"], "system": ["local"]}) == {
        "vo": "workshop",
        "system": "local",
    }


async def test_the_vos_gpu_maximum_counts_every_node_of_a_lab(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    """A VO's ``gpus`` is per lab: 2 nodes with 2 GPUs each are 4, over a limit of 2
    (before, each node was checked alone and 4 nodes with 2 GPUs each passed)."""
    partitions = {
        "gpus": {"nodes": {"min": 1, "max": 4}, "gpus": {"min": 0, "max": 4, "default": 1}}
    }
    systems = {
        "hpc": site.unicore_catalog_system(partitions=partitions, reservations={}, access=[])
    }
    vos = {"gpu": {"members": {"groups": ["workshop"]}, "quota": {"gpus": 2}}}
    doc = site.doc(tmp_path / "state", database_url, systems=systems, vos=vos)
    settings = site.settings(doc)
    backend = await start_backend(settings)
    body = start_body("alice", system="hpc", partition="gpus", nodes=2, gpus=2)
    body["user"]["entitlements"] = [ENTITLEMENT]
    refused = await post_lab(backend, body)
    assert_error(refused, 422, "4 GPUs", "the 2 a lab may have in VO gpu", field="gpus")
    async with backend.client(None, admin_token=True) as admin:
        assert (await admin.get("/labs")).json() == []  # nothing was stored
    # 2 nodes with one GPU each are 2: allowed (checked without starting a job)
    allowed = {"system": "hpc", "partition": "gpus", "nodes": 2, "gpus": 1}
    _, clean = validate_options(
        settings,
        allowed,
        "alice",
        frozenset({"workshop"}),
        entitlements=frozenset({ENTITLEMENT}),
        vo="gpu",
    )
    assert (clean["nodes"], clean["gpus"]) == (2, 1)


# -- starts that arrive together are admitted together ---------------------------------


def batch_site(tmp_path: Path, database_url: str) -> Settings:
    vos = {
        "big": {
            "display_name": "Big",
            "members": {"groups": ["workshop"]},
            "systems": ["local"],
            "quota": {"labs": 10, "labs_per_user": 2},
        },
        "small": {
            "display_name": "Small",
            "members": {"groups": ["workshop"]},
            "systems": ["local"],
            "quota": {"labs": 3},
        },
    }
    return vo_site(tmp_path, database_url, vos)


async def post_all(backend: RunningBackend, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every start at once, each as the hub sends it for its person."""
    limits = httpx.Limits(max_connections=len(bodies) + 5)
    async with httpx.AsyncClient(
        base_url=f"{backend.url}/api/v1", timeout=60, trust_env=False, limits=limits
    ) as http:

        async def start(body: dict[str, Any]) -> httpx.Response:
            headers = {
                "Authorization": f"Bearer {backend.tokens['hub']}",
                "X-Lablink-User": body["user"]["name"],
            }
            return await http.post("/labs", json=body, headers=headers)

        return list(await asyncio.gather(*(start(b) for b in bodies)))


async def test_a_mixed_burst_gets_the_answers_of_starts_one_by_one(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    """Starts that arrive together share one admission transaction; each still gets the
    answer it would get alone: two VOs with different room, a per-person limit and
    one server name asked for six times."""
    backend = await start_backend(batch_site(tmp_path, database_url))

    def body(user: str, server: str, vo: str) -> dict[str, Any]:
        start = start_body(user, server)
        start["vo"] = vo
        return start

    bodies = [body(f"s{i}", "", "small") for i in range(12)]
    bodies += [body("alice", f"a{i}", "big") for i in range(6)]
    bodies += [body("bob", "same", "big") for _ in range(6)]
    bodies += [body(f"c{i}", "", "big") for i in range(5)]
    answers = await post_all(backend, bodies)

    def statuses(user_prefix: str) -> list[int]:
        return sorted(
            a.status_code
            for a, b in zip(answers, bodies, strict=True)
            if b["user"]["name"].startswith(user_prefix)
        )

    assert statuses("s") == [202] * 3 + [429] * 9
    assert statuses("alice") == [202] * 2 + [429] * 4
    assert statuses("bob") == [202] + [409] * 5
    assert statuses("c") == [202] * 5
    for answer, sent in zip(answers, bodies, strict=True):
        who = sent["user"]["name"]
        if answer.status_code == 429 and who.startswith("s"):
            assert_error(answer, 429, "VO Small has reached its limit of 3 active labs (3 in use)")
        elif answer.status_code == 429:
            assert_error(answer, 429, "You have 2 active labs in VO Big", "per person (2)")
        elif answer.status_code == 409:
            assert_error(answer, 409, "'bob' already has an active lab for 'same'")

    async with backend.client(None, admin_token=True) as admin:
        stored = (await admin.get("/labs")).json()
        firsts = {
            lab["id"]: (await admin.get(f"/labs/{lab['id']}/events")).json()[0]["message"]
            for lab in stored
        }
    assert len(stored) == 11
    # each admitted lab was counted with the ones before it: 1 of 3, 2 of 3, 3 of 3
    small = sorted(firsts[lab["id"]] for lab in stored if lab["vo"] == "small")
    assert [m.split("VO Small: ")[1] for m in small] == [
        f"{n} of 3 labs in use; yours: 1." for n in (1, 2, 3)
    ]
    big = [firsts[lab["id"]].split("VO Big: ")[1] for lab in stored if lab["vo"] == "big"]
    assert sorted(int(m.split(" of ")[0]) for m in big) == list(range(1, 9))
    alices = [firsts[lab["id"]] for lab in stored if lab["user"] == "alice"]
    assert sorted(m.rsplit("yours: ", 1)[1] for m in alices) == ["1 of 2.", "2 of 2."]
    assert [lab["server_name"] for lab in stored if lab["user"] == "bob"] == ["same"]
    await stop_everything(backend)


async def test_starts_at_once_share_a_transaction_and_keep_their_own_answers(
    database_url: str,
) -> None:
    """The store's side: nine starts at once take one transaction (not nine); each
    caller gets the lab, QuotaExceeded with the usage before it, or ServerNameBusy
    with the lab that has the name, as one by one in the order they came."""
    from sqlalchemy import event, func, select

    from backend.db import create_engine, events, labs, migrate
    from backend.settings import normalize_database_url
    from backend.store import Admission, Lab, QuotaExceeded, ServerNameBusy, Store, Usage

    engine = create_engine(normalize_database_url(database_url))
    await migrate(engine)
    transactions = []  # committed ones (reads end in a rollback)
    event.listen(engine.sync_engine, "commit", lambda conn: transactions.append(conn))
    try:
        store = Store(engine)
        v, w = Admission("v", 3, 2), Admission("w", 1, None)
        seen: dict[str, Usage | None] = {}

        async def start(user: str, server: str, admission: Admission | None) -> Lab:
            key = f"{user}/{server}"

            def message(usage: Usage | None) -> str:
                seen[key] = usage
                return f"accepted {key}"

            return await store.create_lab(
                user_name=user,
                server_name=server,
                system="local",
                vo=admission.vo if admission else None,
                options={},
                message=message,
                admission=admission,
            )

        asked = [
            ("u0", "a", v),  # 1 of 3 in v
            ("u0", "b", v),  # 2 of 3, u0's 2 of 2
            ("u0", "c", v),  # u0's limit
            ("u1", "a", v),  # 3 of 3
            ("u1", "b", v),  # v is full
            ("u2", "x", None),
            ("u2", "x", None),  # the name is taken by the one before
            ("u3", "a", w),  # 1 of 1 in w
            ("u4", "a", w),  # w is full
        ]
        answers = await asyncio.gather(*(start(*a) for a in asked), return_exceptions=True)
        assert len(transactions) == 1, len(transactions)

        ok = [a for a in answers if isinstance(a, Lab)]
        assert [(lab.user_name, lab.server_name) for lab in ok] == [
            ("u0", "a"),
            ("u0", "b"),
            ("u1", "a"),
            ("u2", "x"),
            ("u3", "a"),
        ]
        assert all(lab.message == f"accepted {lab.user_name}/{lab.server_name}" for lab in ok)
        assert seen["u0/a"] == Usage(1, 1) and seen["u0/b"] == Usage(2, 2)
        assert seen["u1/a"] == Usage(3, 1) and seen["u3/a"] == Usage(1, 1)
        assert seen["u2/x"] is None

        per_user, full_v, busy, full_w = answers[2], answers[4], answers[6], answers[8]
        assert isinstance(per_user, QuotaExceeded) and per_user.limit == "labs_per_user"
        assert per_user.usage == Usage(2, 2) and per_user.admission == v
        assert isinstance(full_v, QuotaExceeded) and full_v.limit == "labs"
        assert full_v.usage == Usage(3, 1)
        assert isinstance(busy, ServerNameBusy) and busy.existing == answers[5]
        assert isinstance(full_w, QuotaExceeded) and full_w.usage == Usage(1, 0)

        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(labs))).scalar() == 5
            firsts = (await conn.execute(select(events.c.lab_id, events.c.seq))).all()
        assert sorted(firsts) == sorted((lab.id, 1) for lab in ok)
        assert await store.get_lab(ok[0].id) == ok[0]  # the answer is the lab as stored

        # lone starts afterwards: a transaction each, at once; what the hub said of the
        # person is stored in it, whether the lab is admitted or not
        with pytest.raises(QuotaExceeded):
            await store.create_lab(
                user_name="u5",
                server_name="a",
                system="local",
                vo="w",
                options={},
                message="accepted",
                admission=w,
                identity=store.identity_change(None, ["workshop"], [], ["U5@Example.org"]),
            )
        known = await store.get_user("u5")
        assert known is not None and known.groups == {"workshop"}
        assert known.emails == {"u5@example.org"}
        assert (await start("u5", "b", None)).user_name == "u5"
        assert len(transactions) == 3
    finally:
        await engine.dispose()


async def test_a_failed_admission_transaction_fails_its_starts_and_the_next_one_works(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    """The database refuses every new lab (a trigger, as a full disk would): each start
    of the burst is answered 503 with a sentence, nothing is stored, and once the
    database takes writes again the next start is admitted."""
    from sqlalchemy import text

    from backend.db import create_engine

    settings = batch_site(tmp_path, database_url)
    backend = await start_backend(settings)
    engine = create_engine(settings.resolved_database_url)
    if engine.dialect.name == "postgresql":
        refuse = [
            "CREATE FUNCTION refuse_labs() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no space left on device'; END $$",
            "CREATE TRIGGER refuse_labs BEFORE INSERT ON labs "
            "FOR EACH ROW EXECUTE FUNCTION refuse_labs()",
        ]
    else:
        refuse = [
            "CREATE TRIGGER refuse_labs BEFORE INSERT ON labs "
            "BEGIN SELECT RAISE(ABORT, 'no space left on device'); END"
        ]
    try:
        async with engine.begin() as conn:
            for statement in refuse:
                await conn.execute(text(statement))
        bodies = [start_body(f"p{i}") for i in range(8)]
        for b in bodies:
            b["vo"] = "big"
        answers = await post_all(backend, bodies)
        for answer in answers:
            assert_error(answer, 503, "could not be stored", "try again in a minute")
            assert answer.headers["retry-after"] == "60"
        async with backend.client(None, admin_token=True) as admin:
            assert (await admin.get("/labs")).json() == []
        assert fakelab_processes() == []

        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "DROP TRIGGER refuse_labs"
                    + (" ON labs" if engine.dialect.name == "postgresql" else "")
                )
            )
        again = await post_lab(backend, bodies[0])
        assert again.status_code == 202, again.text
        async with backend.client("p0") as p0:
            first = (await p0.get(f"/labs/{again.json()['id']}/events")).json()[0]
        assert "VO Big: 1 of 10 labs in use" in first["message"]
    finally:
        await engine.dispose()
    await stop_everything(backend)
