"""A real OpenID Connect provider for the tests (npm ``oidc-provider``, run by Node).

``make test-deps`` installs the package into ``.venv/oidc``. The provider plays
the site's identity provider: users with passwords and claims (entitlements,
groups), clients registered dynamically (RFC 7591) with their redirect URIs,
refresh tokens, revocation and introspection. ``browser_login`` walks the
authorization-code flow as a browser does, from the application's login URL to
its callback, filling in the provider's login form.

What the provider does (tests/helpers/oidc_provider.mjs):

- scopes ``openid profile email eduperson_entitlement offline_access``; the
  ``eduperson_entitlement`` scope releases both ``eduperson_entitlement`` and
  ``groups``. The claims come at the userinfo endpoint and in the ID token.
- ``sub`` is the user's name, ``preferred_username`` too unless the user's
  claims give one; the rest of the claims as ``set_user`` gives them.
- a refresh token with every code exchange by a client allowed the
  ``refresh_token`` grant (no ``prompt=consent`` needed); refresh tokens are
  not rotated unless ``rotate_refresh_tokens=True`` (then each refresh returns a
  new one and reusing an old one revokes the whole login, as the package does).
- no consent page; PKCE (S256) is checked when the client sends it and
  required of no one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from backend.procs import free_port, tail
from tests.helpers.stack import end_process

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / ".venv" / "oidc" / "node_modules" / "oidc-provider"
SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
TIMEOUT = httpx.Timeout(10)
# the provider's login form (and only it): its action is /interaction/<uid>/login
LOGIN_FORM = re.compile(r'<form method="post" action="(/interaction/[A-Za-z0-9_-]+/login)"')


def origin(url: str | httpx.URL) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}"


class OIDCProvider:
    """One provider process on 127.0.0.1; ``start()`` it, or use it as a context manager.

    The users live in ``workdir/users.json``, which the provider reads again at every
    use: ``set_user`` while it runs changes the next login, userinfo and token TTL.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        access_token_ttl: int = 3600,
        refresh_token_ttl: int = 86400,
        rotate_refresh_tokens: bool = False,
    ):
        self.workdir = workdir
        self.port = port or free_port()
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.registration_token = secrets.token_urlsafe(24)
        self.users_file = workdir / "users.json"
        self.log = workdir / "oidc-provider.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.discovery: dict[str, Any] = {}
        self._users: dict[str, Any] = {}
        self._basic_clients: set[str] = set()

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OIDCProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20) -> None:
        """Start the provider; return once its discovery document answers (and is in
        ``self.discovery``). Raise ``RuntimeError`` if Node.js or the package is
        missing, or if the provider does not answer within ``timeout`` seconds."""
        node = shutil.which("node")
        if node is None or not (PACKAGE / "package.json").is_file():
            raise RuntimeError(
                "the OIDC provider needs Node.js and the npm package oidc-provider in "
                f"{PACKAGE.parent}: run `make test-deps`"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_users()
        entry = json.loads((PACKAGE / "package.json").read_text())["main"]
        config = {
            "issuer": self.issuer,
            "port": self.port,
            # an ES module import does not look at NODE_PATH: import the package by path
            "provider_module": (PACKAGE / entry).as_uri(),
            "users_file": str(self.users_file),
            "registration_token": self.registration_token,
            "cookie_keys": [secrets.token_urlsafe(32)],
            "access_token_ttl": self.access_token_ttl,
            "refresh_token_ttl": self.refresh_token_ttl,
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
        }
        cfg = self.workdir / "oidc-provider.json"
        cfg.write_text(json.dumps(config))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [node, str(SCRIPT), str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                resp = httpx.get(
                    f"{self.issuer}/.well-known/openid-configuration", timeout=1, trust_env=False
                )
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if resp.status_code == 200:
                self.discovery = resp.json()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the OIDC provider did not come up:\n{self.log_text()}")

    def stop(self) -> None:
        end_process(self.proc, signal.SIGTERM, 10)
        self.proc = None

    def log_text(self, lines: int = 40) -> str:
        """The end of the provider's log (its output and errors)."""
        return tail(self.log, lines)

    # -- users and clients -----------------------------------------------------------

    def _write_users(self) -> None:
        tmp = self.users_file.with_name(f".{self.users_file.name}.tmp")
        tmp.write_text(json.dumps(self._users))
        os.replace(tmp, self.users_file)

    def set_user(
        self,
        name: str,
        password: str,
        claims: dict[str, Any] | None = None,
        access_token_ttl: int | None = None,
        refresh_token_ttl: int | None = None,
    ) -> None:
        """Add or replace a user; the TTLs (seconds) apply to tokens issued from now on.
        Without them the provider's defaults apply."""
        user: dict[str, Any] = {"password": password, "claims": claims or {}}
        if access_token_ttl is not None:
            user["access_token_ttl"] = access_token_ttl
        if refresh_token_ttl is not None:
            user["refresh_token_ttl"] = refresh_token_ttl
        self._users[name] = user
        self._write_users()

    def register_client(
        self, redirect_uris: list[str], token_endpoint_auth_method: str = "client_secret_post"
    ) -> tuple[str, str]:
        """Register a confidential client allowed the authorization_code and
        refresh_token grants; return ``(client_id, client_secret)``.

        ``token_endpoint_auth_method`` is ``client_secret_post`` (what oauthenticator
        does by default) or ``client_secret_basic`` (its ``basic_auth = True``); the
        provider accepts only the registered one."""
        resp = httpx.post(
            self.discovery["registration_endpoint"],
            json={
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": token_endpoint_auth_method,
            },
            headers={"Authorization": f"Bearer {self.registration_token}"},
            timeout=TIMEOUT,
            trust_env=False,
        )
        resp.raise_for_status()
        body = resp.json()
        client_id, client_secret = str(body["client_id"]), str(body["client_secret"])
        if token_endpoint_auth_method == "client_secret_basic":
            self._basic_clients.add(client_id)
        return client_id, client_secret

    def client_post(
        self, endpoint: str, data: dict[str, str], client_id: str, client_secret: str
    ) -> httpx.Response:
        """POST ``data`` to the discovery document's ``endpoint`` (e.g.
        ``"token_endpoint"``) as the client, with the client's registered way of
        authenticating."""
        auth = None
        if client_id in self._basic_clients:
            auth = httpx.BasicAuth(client_id, client_secret)
        else:
            data = {**data, "client_id": client_id, "client_secret": client_secret}
        return httpx.post(
            self.discovery[endpoint], data=data, auth=auth, timeout=TIMEOUT, trust_env=False
        )

    def revoke(self, token: str, client_id: str, client_secret: str) -> None:
        """Revoke an access or refresh token of this client (RFC 7009); revoking a
        refresh token ends the whole login (its access tokens too)."""
        # RFC 7009: 200 also for a token that is unknown or already revoked
        resp = self.client_post("revocation_endpoint", {"token": token}, client_id, client_secret)
        resp.raise_for_status()

    def introspect(self, token: str, client_id: str, client_secret: str) -> dict[str, Any]:
        """The provider's view of a token (RFC 7662): ``{"active": False}`` once it
        expired or was revoked, else ``active``, ``exp``, ``sub``, ``scope``, ..."""
        resp = self.client_post(
            "introspection_endpoint", {"token": token}, client_id, client_secret
        )
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]


async def browser_login(
    http: httpx.AsyncClient,
    start_url: str,
    username: str,
    password: str,
    provider: str | None = None,
) -> httpx.Response:
    """Log in as a browser does: follow redirects by hand from ``start_url`` (the
    application's login URL, e.g. ``{hub}/hub/oauth_login?next=...``) across hosts,
    with ``http``'s one cookie jar, and post ``username`` and ``password`` to the
    provider's login form when it comes (once).

    Returns the first answer that is not a redirect and not the provider's login
    form before it was posted. That is:

    - after a login the provider accepts: the page the redirects after the
      application's callback end on (for the hub, ``/hub/home`` or ``next``, 200);
    - when the provider refuses the password: its login form again, 401;
    - when the provider refuses the request (an unknown redirect URI, ...): its
      error page (400, text);
    - when the provider still has a session in the jar: the application's page,
      without a form.

    ``provider`` (the issuer) is optional: the login form is recognised by its
    action, ``/interaction/<uid>/login``; if given, a form on another origin is not
    filled in. Raises ``AssertionError`` after 30 steps without an answer.
    """
    url, method, data = start_url, "GET", None
    posted = False
    for _ in range(30):
        resp = await http.request(method, url, data=data, follow_redirects=False)
        method, data = "GET", None
        if resp.is_redirect:
            url = urljoin(str(resp.url), resp.headers["location"])
            continue
        form = LOGIN_FORM.search(resp.text) if not posted else None
        if form and (provider is None or origin(resp.url) == origin(provider)):
            url, method = urljoin(str(resp.url), form.group(1)), "POST"
            data = {"username": username, "password": password}
            posted = True
            continue
        return resp
    raise AssertionError(f"the login did not end after 30 steps (last: {origin(url)})")
