"""The test OpenID Connect provider alone (tests/helpers/oidc.py), with plain httpx.

The hub's login tests (test_oidc.py) rely on what is checked here: the discovery
document, the authorization-code flow with the provider's own login form, the
claims at userinfo, refresh tokens that work more than once, revocation, a
user's short token lifetime, and a refused password. The client application is
a stand-in served by an httpx mock transport on its own origin, so
``browser_login`` crosses origins as it does between hub and provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import pytest

from backend.procs import free_port
from tests.helpers import oidc
from tests.helpers.oidc import OIDCProvider, browser_login

pytestmark = [pytest.mark.oidc, pytest.mark.integration]

NS = "urn:geant:h-df.de"
ALICE = {
    "name": "Alice Example",
    "email": "alice@example.org",
    "eduperson_entitlement": [
        f"{NS}:res:hpc:training2026:act:alice1#login.helmholtz.de",
        f"{NS}:group:ws2026#login.helmholtz.de",
    ],
    "groups": ["hpc-users"],
}
SCOPE = "openid profile email eduperson_entitlement offline_access"
SHORT_TTL = 2  # seconds: the access tokens of user "brief"


class App:
    """The client application: its callback records the code and sends the browser
    on to ``/home``, as the hub's callback does."""

    def __init__(self) -> None:
        self.origin = f"http://127.0.0.1:{free_port()}"
        self.redirect_uri = f"{self.origin}/callback"
        self.callbacks: list[dict[str, list[str]]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/callback":
            self.callbacks.append(parse_qs(request.url.query.decode()))
            return httpx.Response(302, headers={"Location": "/home"})
        return httpx.Response(200, text=f"application page {request.url.path}")

    def browser(self) -> httpx.AsyncClient:
        """A browser: the real network to the provider, this app on its origin."""
        return httpx.AsyncClient(
            mounts={self.origin: httpx.MockTransport(self.handle)},
            timeout=10,
            trust_env=False,
        )

    def code(self) -> str:
        assert len(self.callbacks) == 1, self.callbacks
        return self.callbacks[0]["code"][0]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    with OIDCProvider(tmp_path_factory.mktemp("oidc-peer")) as p:
        p.set_user("alice", "alice-password", ALICE)
        p.set_user("brief", "brief-password", {"groups": ["guests"]}, access_token_ttl=SHORT_TTL)
        yield p


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def browser(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with app.browser() as http:
        yield http


def authorize_url(
    provider: OIDCProvider,
    client_id: str,
    app: App,
    challenge: str | None = None,
    **extra: str,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": app.redirect_uri,
        "scope": SCOPE,
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        **extra,
    }
    if challenge:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return f"{provider.discovery['authorization_endpoint']}?{urlencode(params)}"


async def log_in(
    provider: OIDCProvider,
    app: App,
    browser: httpx.AsyncClient,
    user: str,
    auth_method: str = "client_secret_post",
    pkce: bool = False,
) -> tuple[tuple[str, str], dict[str, Any]]:
    """Register a client, log ``user`` in through it; return the client and the
    token response."""
    client = provider.register_client([app.redirect_uri], auth_method)
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    start = authorize_url(provider, client[0], app, challenge if pkce else None)
    page = await browser_login(browser, start, user, f"{user}-password")
    assert page.status_code == 200 and page.url == f"{app.origin}/home", (page.url, page.text)
    data = {"grant_type": "authorization_code", "code": app.code()}
    data |= {"redirect_uri": app.redirect_uri}
    if pkce:
        data["code_verifier"] = verifier
    resp = provider.client_post("token_endpoint", data, *client)
    assert resp.status_code == 200, resp.text
    return client, resp.json()


def refresh(provider: OIDCProvider, client: tuple[str, str], token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token}
    return provider.client_post("token_endpoint", data, *client)


def userinfo(provider: OIDCProvider, access_token: str) -> httpx.Response:
    return httpx.get(
        provider.discovery["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
        trust_env=False,
    )


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def test_discovery_document(provider: OIDCProvider) -> None:
    d = provider.discovery
    assert d["issuer"] == provider.issuer == f"http://127.0.0.1:{provider.port}"
    for endpoint in ("authorization", "token", "userinfo", "registration", "revocation"):
        assert d[f"{endpoint}_endpoint"].startswith(provider.issuer)
    assert d["introspection_endpoint"].startswith(provider.issuer)
    assert set(SCOPE.split()) <= set(d["scopes_supported"])
    assert {"preferred_username", "eduperson_entitlement", "groups"} <= set(d["claims_supported"])
    assert {"client_secret_post", "client_secret_basic"} <= set(
        d["token_endpoint_auth_methods_supported"]
    )
    assert {"authorization_code", "refresh_token"} <= set(d["grant_types_supported"])
    assert "S256" in d["code_challenge_methods_supported"]
    keys = httpx.get(d["jwks_uri"], timeout=10, trust_env=False).json()["keys"]
    assert [(k["kty"], k["alg"]) for k in keys] == [("RSA", "RS256")]
    # quiet: no development keys, adapter or default-TTL notices (Node 20 gets one
    # line about the runtime: oidc-provider 9 wants Node 22 and runs on 20)
    noise = [
        line
        for line in provider.log_text().splitlines()
        if "oidc-provider" in line and "listening" not in line and "Unsupported runtime" not in line
    ]
    assert noise == []


@pytest.mark.parametrize(
    ("auth_method", "pkce"),
    [("client_secret_post", True), ("client_secret_post", False), ("client_secret_basic", True)],
)
async def test_the_code_flow_gives_tokens_and_the_claims(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient, auth_method: str, pkce: bool
) -> None:
    _, tokens = await log_in(provider, app, browser, "alice", auth_method, pkce)
    assert tokens["token_type"] == "Bearer"
    assert tokens["access_token"] and tokens["refresh_token"] and tokens["id_token"]
    assert 3590 <= tokens["expires_in"] <= 3600
    assert set(tokens["scope"].split()) >= {"openid", "profile", "email", "eduperson_entitlement"}
    info = userinfo(provider, tokens["access_token"])
    assert info.status_code == 200, info.text
    assert info.json() == {"sub": "alice", "preferred_username": "alice", **ALICE}
    id_token = jwt_claims(tokens["id_token"])
    assert id_token["iss"] == provider.issuer and id_token["sub"] == "alice"
    assert id_token["groups"] == ["hpc-users"]


async def test_a_code_needs_its_pkce_verifier(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    client = provider.register_client([app.redirect_uri])
    start = authorize_url(provider, client[0], app, challenge="A" * 43)
    page = await browser_login(browser, start, "alice", "alice-password")
    assert page.status_code == 200
    data = {"grant_type": "authorization_code", "code": app.code()}
    data |= {"redirect_uri": app.redirect_uri, "code_verifier": "B" * 43}
    resp = provider.client_post("token_endpoint", data, *client)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text


async def test_prompt_consent_and_requested_claims_need_no_consent_page(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    """Some clients send prompt=consent with offline_access; the claims parameter
    asks for single claims: both are granted without a page."""
    client = provider.register_client([app.redirect_uri])
    claims = json.dumps({"userinfo": {"groups": None}})
    start = authorize_url(provider, client[0], app, scope="openid", prompt="consent", claims=claims)
    page = await browser_login(browser, start, "alice", "alice-password")
    assert page.status_code == 200 and page.url == f"{app.origin}/home", page.text
    data = {"grant_type": "authorization_code", "code": app.code()}
    resp = provider.client_post(
        "token_endpoint", data | {"redirect_uri": app.redirect_uri}, *client
    )
    assert resp.status_code == 200, resp.text
    info = userinfo(provider, resp.json()["access_token"]).json()
    assert info == {"sub": "alice", "groups": ["hpc-users"]}


async def test_a_refresh_token_works_again_and_brings_new_claims(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    provider.set_user("carl", "carl-password", {"eduperson_entitlement": ["e1"]})
    client, tokens = await log_in(provider, app, browser, "carl")
    first = refresh(provider, client, tokens["refresh_token"])
    assert first.status_code == 200, first.text
    # not rotated: the same token comes back and stays valid
    assert first.json()["refresh_token"] == tokens["refresh_token"]
    provider.set_user("carl", "carl-password", {"eduperson_entitlement": ["e1", "e2"]})
    second = refresh(provider, client, tokens["refresh_token"])
    assert second.status_code == 200, second.text
    access = second.json()["access_token"]
    assert access not in (tokens["access_token"], first.json()["access_token"])
    assert userinfo(provider, access).json()["eduperson_entitlement"] == ["e1", "e2"]


async def test_a_revoked_refresh_token_is_refused(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    client, tokens = await log_in(provider, app, browser, "alice")
    assert provider.introspect(tokens["refresh_token"], *client)["active"] is True
    provider.revoke(tokens["refresh_token"], *client)
    resp = refresh(provider, client, tokens["refresh_token"])
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
    assert provider.introspect(tokens["refresh_token"], *client) == {"active": False}
    # the login is over: its access token too
    assert provider.introspect(tokens["access_token"], *client) == {"active": False}
    assert userinfo(provider, tokens["access_token"]).status_code == 401


async def test_a_users_short_access_token_expires(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    client, tokens = await log_in(provider, app, browser, "brief")
    assert tokens["expires_in"] <= SHORT_TTL
    seen = provider.introspect(tokens["access_token"], *client)
    assert seen["active"] is True and seen["sub"] == "brief" and seen["client_id"] == client[0]
    assert seen["exp"] <= time.time() + SHORT_TTL
    await asyncio.sleep(SHORT_TTL + 0.2)
    assert provider.introspect(tokens["access_token"], *client) == {"active": False}
    assert userinfo(provider, tokens["access_token"]).status_code == 401
    renewed = refresh(provider, client, tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    assert userinfo(provider, renewed.json()["access_token"]).json()["groups"] == ["guests"]


async def test_a_wrong_password_gets_the_form_again_and_no_code(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    client = provider.register_client([app.redirect_uri])
    start = authorize_url(provider, client[0], app)
    for user, password in [("alice", "guess"), ("mallory", "mallory-password")]:
        page = await browser_login(browser, start, user, password, provider.issuer)
        assert page.status_code == 401 and "Wrong user name or password." in page.text
        assert str(page.url).startswith(f"{provider.issuer}/interaction/")
        assert "guess" not in page.text
    assert app.callbacks == []


async def test_an_unregistered_redirect_uri_is_refused(
    provider: OIDCProvider, app: App, browser: httpx.AsyncClient
) -> None:
    client = provider.register_client([f"{app.origin}/elsewhere"])
    page = await browser_login(browser, authorize_url(provider, client[0], app), "alice", "x")
    assert page.status_code == 400 and "redirect_uri" in page.text
    assert app.callbacks == []


def test_registration_needs_the_initial_access_token(provider: OIDCProvider) -> None:
    resp = httpx.post(
        provider.discovery["registration_endpoint"],
        json={"redirect_uris": ["http://127.0.0.1:9/cb"]},
        timeout=10,
        trust_env=False,
    )
    assert resp.status_code in (400, 401), resp.text
    assert "invalid" in resp.json()["error"]


async def test_rotated_refresh_tokens_are_single_use(
    tmp_path: Path, app: App, browser: httpx.AsyncClient
) -> None:
    with OIDCProvider(tmp_path, rotate_refresh_tokens=True) as rotating:
        rotating.set_user("alice", "alice-password", ALICE)
        client, tokens = await log_in(rotating, app, browser, "alice")
        first = refresh(rotating, client, tokens["refresh_token"])
        assert first.status_code == 200, first.text
        second = refresh(rotating, client, first.json()["refresh_token"])
        assert second.status_code == 200, second.text
        reused = refresh(rotating, client, tokens["refresh_token"])
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        # reuse ends the login, as the package does
        assert refresh(rotating, client, second.json()["refresh_token"]).status_code == 400


def test_without_the_package_start_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oidc, "PACKAGE", tmp_path / "node_modules" / "oidc-provider")
    with pytest.raises(RuntimeError, match="make test-deps"):
        OIDCProvider(tmp_path).start()


def test_the_provider_listens_on_127_0_0_1_only(provider: OIDCProvider) -> None:
    assert f"oidc-provider listening on {provider.issuer}" in provider.log_text()
    with pytest.raises(ConnectionRefusedError):  # bound to all addresses, this would connect
        socket.create_connection(("127.0.0.2", provider.port), timeout=2).close()
