"""A real OpenID Connect provider for the tests (npm ``oidc-provider``, run by Node).

``make test-deps`` installs the package into ``.venv/oidc``. The provider plays
the site's identity provider: users with passwords and claims (entitlements,
groups), clients registered dynamically (RFC 7591) with their redirect URIs,
refresh tokens, revocation and introspection. ``browser_login`` walks the
authorization-code flow as a browser does, from the hub's login URL to its
callback, filling in the provider's login form.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from backend.drivers.procs import free_port
from tests.helpers.stack import end_process

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / ".venv" / "oidc" / "node_modules" / "oidc-provider"
SCRIPT = Path(__file__).with_name("oidc_provider.mjs")


class OIDCProvider:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        access_token_ttl: int = 3600,
        refresh_token_ttl: int = 86400,
    ):
        self.workdir = workdir
        self.port = port or free_port()
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.registration_token = secrets.token_urlsafe(24)
        self.users_file = workdir / "users.json"
        self.log = workdir / "oidc-provider.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._users: dict[str, Any] = {}
        self.discovery: dict[str, Any] = {}

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OIDCProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20) -> None:
        node = shutil.which("node")
        if node is None or not (PACKAGE / "package.json").exists():
            raise RuntimeError(
                "the OIDC provider needs Node.js and the npm package oidc-provider in "
                f"{PACKAGE.parent}: run `make test-deps`"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_users()
        config = {
            "issuer": self.issuer,
            "port": self.port,
            "provider_module": (PACKAGE / "lib" / "index.js").as_uri(),
            "users_file": str(self.users_file),
            "registration_token": self.registration_token,
            "cookie_keys": [secrets.token_urlsafe(32)],
            "access_token_ttl": self.access_token_ttl,
            "refresh_token_ttl": self.refresh_token_ttl,
        }
        cfg = self.workdir / "oidc-provider.json"
        cfg.write_text(json.dumps(config))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [node, str(SCRIPT), str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                resp = httpx.get(
                    f"{self.issuer}/.well-known/openid-configuration", timeout=1, trust_env=False
                )
                if resp.status_code == 200:
                    self.discovery = resp.json()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the OIDC provider did not come up:\n{self.log_text()}")

    def stop(self) -> None:
        end_process(self.proc, __import__("signal").SIGTERM, 10)
        self.proc = None

    def log_text(self, last: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-last:] if self.log.exists() else ""

    # -- users and clients -----------------------------------------------------------

    def _write_users(self) -> None:
        tmp = self.users_file.with_suffix(".tmp")
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
        user: dict[str, Any] = {"password": password, "claims": claims or {}}
        if access_token_ttl is not None:
            user["access_token_ttl"] = access_token_ttl
        if refresh_token_ttl is not None:
            user["refresh_token_ttl"] = refresh_token_ttl
        self._users[name] = user
        self._write_users()

    def register_client(self, redirect_uris: list[str]) -> tuple[str, str]:
        resp = httpx.post(
            self.discovery["registration_endpoint"],
            json={
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_post",
            },
            headers={"Authorization": f"Bearer {self.registration_token}"},
            timeout=10,
            trust_env=False,
        )
        resp.raise_for_status()
        body = resp.json()
        return str(body["client_id"]), str(body["client_secret"])

    def _client_call(self, endpoint: str, token: str, client: tuple[str, str]) -> httpx.Response:
        return httpx.post(
            self.discovery[endpoint],
            data={"token": token, "client_id": client[0], "client_secret": client[1]},
            timeout=10,
            trust_env=False,
        )

    def revoke(self, token: str, client: tuple[str, str]) -> None:
        self._client_call("revocation_endpoint", token, client).raise_for_status()

    def introspect(self, token: str, client: tuple[str, str]) -> dict[str, Any]:
        resp = self._client_call("introspection_endpoint", token, client)
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]


async def browser_login(
    http: httpx.AsyncClient, start_url: str, username: str, password: str, provider: str
) -> httpx.Response:
    """Follow redirects from ``start_url`` as a browser does, across the hub and the
    provider (one cookie jar), and post the provider's login form when it comes.

    Returns the first answer from outside ``provider`` after the login form was
    posted that is not a redirect (the hub's page after its OAuth callback), or
    the provider's own answer when it does not let the person in (a 401 form).
    """
    url, method, data = start_url, "GET", None
    posted = False
    for _ in range(30):
        resp = await http.request(method, url, data=data, follow_redirects=False)
        method, data = "GET", None
        if resp.is_redirect:
            url = urljoin(str(resp.url), resp.headers["location"])
            continue
        on_provider = str(resp.url).startswith(provider)
        form = re.search(r'<form method="post" action="([^"]+/login)"', resp.text)
        if on_provider and form and not posted:
            url, method = urljoin(str(resp.url), form.group(1)), "POST"
            data = {"username": username, "password": password}
            posted = True
            continue
        return resp
    raise AssertionError(f"the login did not end after 30 steps (last: {url})")


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
