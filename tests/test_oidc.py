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
}
SHORT = {"carol": (4, None), "dave": (2, 2), "erin": (2, 2)}  # access, refresh TTL (s)


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
    devsite.start(
        "--oidc-userinfo", provider.discovery["userinfo_endpoint"], "--queues", "batch,devel"
    )
    s = Stack(state_dir=root / "state", password="unused-demo-password", users=["demo"])
    client = provider.register_client([f"http://127.0.0.1:{s.ports['hub']}/hub/oauth_callback"])
    doc = yaml.safe_load(TEMPLATE.read_text())
    doc["identity"] = dict(site.IDENTITY)  # the provider's entitlements give accounts
    doc["systems"] = {
        "local": doc["systems"]["local"],
        "hpc": site.unicore_system(devsite.url, auth={"method": "bearer"}, access=[]),
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
        assert '<option value="alice1">' in html and '<option value="training2026">' in html
        assert "bob7" not in html and "p2" not in html
        assert "VO Workshop 2026" in html
        assert 'name="vo" value="workshop"' in html
        assert "yours 0 of 1" in html and "per lab up to 30 minutes" in html
    async with await log_in(stack, provider, "bob") as bob:
        html = (await bob.http.get("/hub/spawn")).text
        assert '<option value="bob7">' in html and "alice1" not in html


async def test_a_person_in_no_vo_gets_a_clear_page(stack: Stack, provider: OIDCProvider) -> None:
    async with await log_in(stack, provider, "nobody") as nobody:
        form = await nobody.http.get("/hub/spawn")
        assert form.status_code == 200 and "not a member of any VO" in form.text
        page = await nobody.http.get("/hub/lablink/vo")
        assert page.status_code == 200 and "not a member of any VO" in page.text
        assert (await vos_of(nobody)) == {"vo": None, "vos": []}
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
        assert "not a member of VO 'research'" in resp.json()["message"]
        resp = await bob.start(options={"system": "hpc", "runtime": "45"})
        assert resp.status_code == 422 and "options.runtime" in resp.json()["message"]


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
        assert "VO 'workshop': 1 of 20 labs in use; yours: 1 of 1." in messages
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
