"""Logging in through a real OpenID Connect provider, end to end.

The provider (npm ``oidc-provider``, tests/helpers/oidc.py) plays the site's
identity provider: its users carry AARC-G069 entitlements and groups. The hub
(`lablink up` with ``LABLINK_OIDC_ISSUER``) logs people in through the real
OAuth flow; the UNICORE development site trusts the same provider's tokens, as
a UNICORE/X with OAuth2 login does, so an HPC lab only starts with a token the
provider still accepts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import backend
from backend.inspect import find_lab
from backend.settings import load_settings
from backend.store import Event, Lab
from tests.helpers import site
from tests.helpers.devsite import Devsite
from tests.helpers.hub import HubUser
from tests.helpers.oidc import OIDCProvider, browser_login
from tests.helpers.stack import Stack

pytestmark = [pytest.mark.oidc, pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

NS = "urn:geant:h-df.de"
WORKSHOP_GROUP = f"{NS}:group:ws2026#login.helmholtz.de"
RESEARCH_GROUP = f"{NS}:group:research#login.helmholtz.de"
TEMPLATE = Path(backend.__file__).parent / "data" / "embedded.yaml"
REFRESH_AGE = 6  # seconds between the hub's checks of a login (auth_refresh_age)
SLOW_SETUP = 8  # seconds the jobs of the system hpc-slow take before their lab starts
BASIC_PASSWORD_ENV = "OIDC_TEST_DEVSITE_PASSWORD"  # hpc-basic's own login at the site
LOST_LOGIN = re.compile(
    r"Your login could not be renewed with Test AAI; log in to the hub again"
    r"( before \d\d:\d\d UTC)?, or the lab's job can no longer be followed\."
)


def entitlement(project: str, account: str) -> str:
    return f"{NS}:res:hpc:{project}:act:{account}#login.helmholtz.de"


USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "eduperson_entitlement": [
            entitlement("training2026", "alice1"),
            WORKSHOP_GROUP,
            RESEARCH_GROUP,
        ],
        "groups": ["hpc-users"],
        "name": "Alice Example",
    },
    "bob": {"eduperson_entitlement": [WORKSHOP_GROUP, entitlement("p2", "bob7")]},
    "carol": {"eduperson_entitlement": [WORKSHOP_GROUP, entitlement("training2026", "carol1")]},
    "dave": {"eduperson_entitlement": [WORKSHOP_GROUP]},
    "erin": {"eduperson_entitlement": [WORKSHOP_GROUP]},
    "nobody": {"eduperson_entitlement": [], "groups": ["guests"]},
    "frank": {
        "eduperson_entitlement": [
            WORKSHOP_GROUP,
            f"{NS}:res:hpc-slow:training2026:act:frank1#login.helmholtz.de",
        ]
    },
    "gina": {"eduperson_entitlement": [WORKSHOP_GROUP, entitlement("training2026", "gina1")]},
    "hank": {"eduperson_entitlement": [WORKSHOP_GROUP]},
}
# access, refresh token lifetimes (s)
SHORT = {
    "carol": (4, None),
    "dave": (2, 2),
    "erin": (2, 2),
    "frank": (3, None),
    "gina": (3, None),
    "hank": (3, 1),
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    with OIDCProvider(tmp_path_factory.mktemp("oidc")) as p:
        for name, claims in USERS.items():
            access, refresh = SHORT.get(name, (None, None))
            p.set_user(name, f"{name}-password", claims, access, refresh)
        yield p


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, provider: OIDCProvider) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("oidc-stack")
    devsite = Devsite(workdir=root / "devsite", log=root / "devsite.log")
    # the site asks the provider about a token at most once a second, as a UNICORE/X
    # without a cache would: an expired token is refused a second after it expired
    devsite.start(
        "--oidc-userinfo",
        provider.discovery["userinfo_endpoint"],
        "--userinfo-cache",
        "1",
        "--queues",
        "batch,devel",
    )
    s = Stack(state_dir=root / "state", password="unused-demo-password", users=["demo"])
    client = provider.register_client([f"http://127.0.0.1:{s.ports['hub']}/hub/oauth_callback"])
    doc = yaml.safe_load(TEMPLATE.read_text())
    doc["identity"] = dict(site.IDENTITY)  # the provider's entitlements give accounts
    doc["systems"] = {
        "local": doc["systems"]["local"],
        "hpc": site.unicore_system(devsite.url, auth={"method": "bearer"}, access=[]),
        # its jobs take longer to start than the short-lived access tokens live
        "hpc-slow": site.unicore_system(
            devsite.url, auth={"method": "bearer"}, access=[], setup=[f"sleep {SLOW_SETUP}"]
        ),
        # the backend logs in with its own password: the person's token is not needed
        "hpc-basic": site.unicore_system(
            devsite.url,
            auth={"method": "basic", "username": "alice", "password_env": BASIC_PASSWORD_ENV},
            access=[{"users": ["hank"], "accounts": ["alice"], "projects": ["p1"]}],
        ),
    }
    doc["vos"] = {
        "workshop": {
            "display_name": "Workshop 2026",
            "members": {"entitlements": [f"{NS}:group:ws2026#*"]},
            "quota": {"labs": 20, "labs_per_user": 1, "runtime": 30},
        },
        "research": {
            "display_name": "Research",
            "members": {"entitlements": [f"{NS}:group:research#*"]},
            "systems": ["hpc"],
        },
    }
    s.site = site.write(doc, root / "site.yaml")
    s.extra_env = {
        "LABLINK_OIDC_ISSUER": provider.issuer,
        "LABLINK_OIDC_CLIENT_ID": client[0],
        "LABLINK_OIDC_CLIENT_SECRET": client[1],
        "LABLINK_OIDC_NAME": "Test AAI",
        "LABLINK_OIDC_ENTITLEMENT_NAMESPACE": site.IDENTITY["namespace"],
        "LABLINK_OIDC_ENTITLEMENT_AUTHORITY": site.IDENTITY["authority"],
        "LABLINK_OIDC_REFRESH_MARGIN": "2",
        "LABLINK_OIDC_AUTH_REFRESH_AGE": str(REFRESH_AGE),
        "LABLINK_POLL_INTERVAL": "1",
        BASIC_PASSWORD_ENV: devsite.passwords["alice"],
    }
    s.start()
    yield s
    s.stop_cleanly()
    devsite.stop()


async def log_in(stack: Stack, provider: OIDCProvider, name: str) -> HubUser:
    user = HubUser(stack.url, name, "")
    resp = await browser_login(
        user.http,
        f"{stack.url}/hub/oauth_login?next=/hub/home",
        name,
        f"{name}-password",
        provider.issuer,
    )
    assert resp.status_code == 200 and str(resp.url).endswith("/hub/home"), (resp.url, resp.text)
    return user


def hub_log(stack: Stack) -> str:
    return (stack.state_dir / "logs" / "hub.log").read_text(errors="replace")


async def wait_for_log(stack: Stack, pattern: str, timeout: float = 20) -> None:
    """Wait until the hub's log has a line that matches ``pattern``."""
    for _ in range(int(timeout / 0.1)):
        if re.search(pattern, hub_log(stack)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the hub's log has no {pattern!r}:\n{hub_log(stack)[-3000:]}")


async def backend_view(stack: Stack, name: str) -> tuple[Lab, list[Event]]:
    """The person's newest lab and its events, as `lablink inspect` shows them to an admin."""
    ids = re.findall(rf"\b{name}: lab ([0-9a-f-]{{36}}) accepted", hub_log(stack))
    assert ids, f"no lab of {name} in the hub's log"
    assert stack.site is not None
    settings = load_settings(stack.site, {"state_dir": stack.state_dir})
    return await find_lab(settings, ids[-1])


async def start_pending(user: HubUser, options: dict[str, Any]) -> asyncio.Task[Any]:
    """Ask the hub to start the default server; return once the spawn is pending (or has
    ended), with the request still waiting for the hub's answer."""
    starting = asyncio.create_task(user.start(options=options))
    while not starting.done():
        servers = (await user.model()).get("servers", {})
        if servers.get("", {}).get("pending") == "spawn":
            break
        await asyncio.sleep(0.005)
    return starting


async def vos_of(user: HubUser) -> dict[str, Any]:
    resp = await user.http.get("/hub/lablink/vo", params={"format": "json"})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def test_login_through_the_provider_maps_claims_to_groups(
    stack: Stack, provider: OIDCProvider
) -> None:
    async with await log_in(stack, provider, "alice") as alice:
        me = (await alice.api("GET", "/user")).json()
        assert me["name"] == "alice"
        assert set(me["groups"]) == {"hpc-users", "ws2026", "research"}
        home = await alice.http.get("/hub/home")
        assert 'id="lablink-vo-menu"' in home.text  # the switcher in the header
    hub_log = (stack.state_dir / "logs" / "hub.log").read_text(errors="replace")
    assert "alice-password" not in hub_log and "access_token" not in hub_log


async def test_a_wrong_password_does_not_log_in(stack: Stack, provider: OIDCProvider) -> None:
    async with HubUser(stack.url, "alice", "") as mallory:
        resp = await browser_login(
            mallory.http, f"{stack.url}/hub/oauth_login", "alice", "guess", provider.issuer
        )
        assert resp.status_code == 401 and "Wrong user name or password" in resp.text
        assert (await mallory.http.get("/hub/home")).status_code == 302  # still logged out


async def test_the_form_offers_what_the_claims_give(stack: Stack, provider: OIDCProvider) -> None:
    async with await log_in(stack, provider, "alice") as alice:
        form = await alice.http.get("/hub/spawn")
        assert form.status_code == 200
        html = form.text
        assert (
            '<option value="alice1">' in html and '<option value="training2026" data-when=' in html
        )
        assert "bob7" not in html and "p2" not in html
        assert "VO Workshop 2026" in html
        assert 'name="vo" value="workshop"' in html
        assert "yours 0 of 1" in html and "to 30 minutes</small>" in html  # the VO's most
    async with await log_in(stack, provider, "bob") as bob:
        html = (await bob.http.get("/hub/spawn")).text
        assert '<option value="bob7">' in html and "alice1" not in html


async def test_a_person_in_no_vo_gets_a_clear_page(stack: Stack, provider: OIDCProvider) -> None:
    async with await log_in(stack, provider, "nobody") as nobody:
        form = await nobody.http.get("/hub/spawn")
        assert form.status_code == 200 and "not a member of any VO" in form.text
        page = await nobody.http.get("/hub/lablink/vo")
        assert page.status_code == 200 and "not a member of any VO" in page.text
        # in no VO, and no workshop to organize or join: no Workshops link either
        assert (await vos_of(nobody)) == {"vo": None, "vos": [], "workshops": False}
        resp = await nobody.start(options={"system": "local"})
        assert resp.status_code == 403, resp.text
        assert "not a member of any VO" in resp.json()["message"]


async def test_the_vo_switcher_changes_what_is_offered(
    stack: Stack, provider: OIDCProvider
) -> None:
    async with await log_in(stack, provider, "alice") as alice:
        data = await vos_of(alice)
        assert [v["name"] for v in data["vos"]] == ["workshop", "research"]
        assert data["vo"] == "workshop"
        chosen = await alice.http.post(
            "/hub/lablink/vo", data={"vo": "research", "next": "/hub/spawn", "_xsrf": alice.xsrf}
        )
        assert chosen.status_code == 302 and chosen.headers["location"] == "/hub/spawn"
        assert (await vos_of(alice))["vo"] == "research"
        html = (await alice.http.get("/hub/spawn")).text
        assert "VO Research" in html and '<option value="local"' not in html
        forged = await alice.http.post(
            "/hub/lablink/vo", data={"vo": "staff", "next": "/hub/home", "_xsrf": alice.xsrf}
        )
        assert forged.status_code == 403
        assert "not a member of VO &#39;staff&#39;" in forged.text  # the backend's sentence
        away = await alice.http.post(
            "/hub/lablink/vo",
            data={"vo": "workshop", "next": "https://evil.example/", "_xsrf": alice.xsrf},
        )
        assert away.headers["location"] == "/hub/home"  # only pages of this hub
        assert (await vos_of(alice))["vo"] == "workshop"


async def test_a_vo_the_person_is_not_in_cannot_be_forged_into_a_start(
    stack: Stack, provider: OIDCProvider
) -> None:
    async with await log_in(stack, provider, "bob") as bob:
        resp = await bob.start(options={"vo": "research", "system": "hpc"})
        assert resp.status_code == 403, resp.text
        assert "not a member of VO Research" in resp.json()["message"]
        resp = await bob.start(options={"system": "hpc", "runtime": "45"})
        assert resp.status_code == 422 and "Run time: 45 minutes" in resp.json()["message"]


async def test_a_spawn_refreshes_the_token_that_unicore_needs(
    stack: Stack, provider: OIDCProvider
) -> None:
    """carol's access token lives 4 s: when she starts an HPC lab later, only a token
    refreshed before the spawn gets the job past the UNICORE site."""
    async with await log_in(stack, provider, "carol") as carol:
        await asyncio.sleep(4.5)  # the login's access token has expired
        starting = asyncio.create_task(carol.start(options={"system": "hpc", "partition": "devel"}))
        # the progress of a pending spawn replays every event; a lab of the development
        # site can be up in a quarter of a second, so catch the spawn while it is pending
        while not starting.done():
            servers = (await carol.model()).get("servers", {})
            if servers.get("", {}).get("pending") == "spawn":
                break
            await asyncio.sleep(0.005)
        events = await carol.progress()
        resp = await starting
        assert resp.status_code in (201, 202), resp.text
        assert events[-1].get("ready"), events
        messages = " ".join(str(e.get("message", "")) for e in events)
        assert "VO Workshop 2026: 1 of 20 labs in use; yours: 1 of 1." in messages
        assert (await carol.stop()).status_code in (202, 204)
        await carol.wait_stopped()
    hub_log = (stack.state_dir / "logs" / "hub.log").read_text(errors="replace")
    assert "refreshed the access token of carol" in hub_log


async def test_an_expired_refresh_token_sends_the_person_to_log_in(
    stack: Stack, provider: OIDCProvider
) -> None:
    async with await log_in(stack, provider, "dave") as dave:
        form = await dave.http.get("/hub/spawn")
        assert form.status_code == 200
        await asyncio.sleep(2.5)  # access and refresh token have expired
        resp = await dave.http.post(
            "/hub/spawn", data={"system": "local", "vo": "workshop", "_xsrf": dave.xsrf}
        )
        assert resp.status_code == 302, resp.text
        assert resp.headers["location"].startswith("/hub/login?next=")
        assert "spawn" in resp.headers["location"]
    async with await log_in(stack, provider, "erin") as erin:
        await asyncio.sleep(REFRESH_AGE + 0.5)  # the hub checks the login again: it fails
        page = await erin.http.get("/hub/spawn")
        assert page.status_code == 302 and "/hub/login" in page.headers["location"]
        login = await erin.http.get(page.headers["location"])
        assert "Test AAI" in login.text  # the login page, with the provider's name
        assert re.search(r"oauth_login", login.text)


async def test_a_lab_waiting_longer_than_a_token_lives_gets_renewed_tokens(
    stack: Stack, provider: OIDCProvider
) -> None:
    """frank's access token lives 3 s, his lab's job needs 8 s before JupyterLab starts,
    and he waits on the spawn page: nothing he does renews his login, yet UNICORE gets
    a valid token all along because the hub renews it while it follows the start."""
    async with await log_in(stack, provider, "frank") as frank:
        starting = await start_pending(frank, {"system": "hpc-slow", "partition": "devel"})
        events = await frank.progress(timeout=60)  # the one request while he waits
        resp = await starting
        messages = [str(e.get("message", "")) for e in events]
        assert resp.status_code in (201, 202), resp.text
        assert events[-1].get("ready"), messages
        lab, _ = await backend_view(stack, "frank")
        assert lab.state == "running"
        assert (await frank.stop()).status_code in (202, 204)
        await frank.wait_stopped()
    log = hub_log(stack)
    renewals = re.findall(r"frank: renewed the login of frank for lab", log)
    assert len(renewals) >= 2, log[-3000:]  # 8 s of tokens that live 3 s
    assert "refreshed the access token of frank" in log
    assert "access_token" not in log


async def test_a_running_labs_poll_renews_the_token(stack: Stack, provider: OIDCProvider) -> None:
    """gina's lab runs while she does nothing at the hub; the backend follows its job at
    the UNICORE site with her token (which lives 3 s), renewed by the hub's polls."""
    async with await log_in(stack, provider, "gina") as gina:
        starting = await start_pending(gina, {"system": "hpc", "partition": "devel"})
        events = await gina.progress()
        assert (await starting).status_code in (201, 202) and events[-1].get("ready")
        renewed_before = hub_log(stack).count("renewed the login of gina")
        await asyncio.sleep(8)  # nearly three lifetimes of her token, with no request
        lab, lab_events = await backend_view(stack, "gina")
        assert lab.state == "running", [e.message for e in lab_events]
        renewals = hub_log(stack).count("renewed the login of gina") - renewed_before
        assert renewals >= 2, hub_log(stack)[-3000:]
        # the backend followed her job at the site all along: no token was refused
        backend_log = (stack.state_dir / "logs" / "backend.log").read_text(errors="replace")
        assert f"gina lab {lab.id[:8]}: cannot look at the job" not in backend_log
        assert (await gina.stop()).status_code in (202, 204)
        await gina.wait_stopped()


async def test_a_login_that_cannot_be_renewed_is_a_sentence_on_the_lab(
    stack: Stack, provider: OIDCProvider
) -> None:
    """hank's refresh token expires a second after he logs in, while his lab runs: the
    lab gets one sentence that tells him to log in again, and the provider is not asked
    at every poll. Once he has logged in again, his login is renewed again."""
    async with await log_in(stack, provider, "hank") as hank:
        starting = await start_pending(hank, {"system": "hpc-basic", "partition": "devel"})
        events = await hank.progress()
        assert (await starting).status_code in (201, 202) and events[-1].get("ready")
        await wait_for_log(stack, r"refresh of hank's login failed")
        await asyncio.sleep(5)  # five polls, all with a token due for renewal, then expired
        log = hub_log(stack)
        assert log.count("refresh of hank's login failed") == 1, log[-3000:]
        assert log.count("the login of hank could not be renewed; telling lab") == 1
        lab, lab_events = await backend_view(stack, "hank")
        told = [e for e in lab_events if LOST_LOGIN.fullmatch(e.message)]
        assert len(told) == 1, [e.message for e in lab_events]
        assert (told[0].state, told[0].progress) == ("running", 100)
        assert lab.state == "running" and LOST_LOGIN.fullmatch(lab.message), lab.message

        # he logs in again, now with a refresh token that lasts
        provider.set_user("hank", "hank-password", USERS["hank"], 3, None)
        again = await browser_login(
            hank.http, f"{stack.url}/hub/oauth_login?next=/hub/home", "hank", "hank-password"
        )
        assert again.status_code == 200, again.text
        # (the hub itself tried his stale login once more on the way: its own check)
        await wait_for_log(stack, r"hank: renewed the login of hank for lab", timeout=10)
        assert (await hank.stop()).status_code in (202, 204)
        await hank.wait_stopped()
