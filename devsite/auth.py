"""Errors and authentication of the development site's API.

Errors are UNICORE's ``{"errorMessage": "<one sentence>", "status": <code>}``, never
a traceback. Users authenticate with HTTP basic (name and password) or a bearer
token: one given on the command line, or one that an OIDC provider's userinfo
accepts (``--oidc-userinfo``), as UNICORE/X's OAuth2 authenticator does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.vos import DEFAULT_ENTITLEMENT_PATTERN, entitlement_grants

from . import DevsiteConfig, SiteError

log = logging.getLogger("lablink.devsite")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Any:
    return JSONResponse({"errorMessage": message, "status": status}, status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SiteError)
    async def _site(request: Request, exc: SiteError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)  # type: ignore[no-any-return]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ())]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])}" if len(loc) > 1 else "request"
        message = f"The {where} is not valid: {err.get('msg', 'invalid')}."
        return error_response(400, message)  # type: ignore[no-any-return]

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"There is no {request.url.path} here."
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        elif exc.status_code != 404:
            message = str(exc.detail)
        return error_response(exc.status_code, message, exc.headers)  # type: ignore[no-any-return]

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = "An internal error occurred; the site's log has the details."
        return error_response(500, message)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Caller:
    name: str
    dn: str
    uid: str
    uids: tuple[str, ...]
    group: str | None
    method: str


def parse_preferences(header: str) -> dict[str, str]:
    """``X-UNICORE-User-Preferences: uid:x,group:y,role:user`` as a dict."""
    prefs = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition(":")
        if not sep or not key or not value:
            raise SiteError(400, "X-UNICORE-User-Preferences must look like 'uid:name,group:name'.")
        prefs[key.strip()] = value.strip()
    return prefs


def check_credentials(config: DevsiteConfig, header: str) -> tuple[str, str] | None:
    """(user name, method) for a valid Authorization header; secrets compared in constant time."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = config.users.get(name)
        expected = user.password if user and user.password else "\0" + password + "\0"
        ok = hmac.compare_digest(expected.encode(), password.encode())
        return (name, "PASSWORD_FILE") if ok and user else None
    if scheme.lower() == "bearer":
        found = None
        for token, name in config.tokens.items():
            if hmac.compare_digest(token.encode(), value.strip().encode()):
                found = name
        return (found, "OAUTH") if found else None
    return None


OidcCaller = tuple[str, tuple[str, ...]]


class UserinfoCache:
    """The provider's answers for a while, by a hash of the token (the token itself is not
    kept): a lab polls its job every few seconds, and the provider should not be asked
    each time. At most ``size`` answers, each for ``seconds`` (0: none is kept)."""

    def __init__(self, seconds: float = 60.0, size: int = 4096):
        self.seconds = seconds
        self.size = size
        self._answers: OrderedDict[bytes, tuple[float, OidcCaller | None]] = OrderedDict()

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> tuple[bool, OidcCaller | None]:
        found = self._answers.get(self.key(token))
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    def put(self, token: str, answer: OidcCaller | None) -> None:
        if self.seconds <= 0:
            return
        self._answers[self.key(token)] = (time.monotonic() + self.seconds, answer)
        self._answers.move_to_end(self.key(token))
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)


async def oidc_caller(
    config: DevsiteConfig, http: httpx.AsyncClient, header: str, cache: UserinfoCache
) -> OidcCaller | None:
    """(name, uids) of the person whose bearer token the OIDC provider's userinfo accepts."""
    scheme, _, token = header.strip().partition(" ")
    if not config.oidc_userinfo or scheme.lower() != "bearer" or not token.strip():
        return None
    known, answer = cache.get(token.strip())
    if known:
        return answer
    answer = await ask_userinfo(config, http, token.strip())
    cache.put(token.strip(), answer)
    return answer


async def ask_userinfo(
    config: DevsiteConfig, http: httpx.AsyncClient, token: str
) -> OidcCaller | None:
    try:
        resp = await http.get(config.oidc_userinfo, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        log.warning("the OIDC provider cannot be asked: %r", exc)
        raise SiteError(503, "The identity provider cannot be reached; try again later.") from None
    if resp.status_code != 200:
        return None
    claims = resp.json()
    name = str(claims.get("preferred_username") or claims.get("sub") or "")
    if not name:
        return None
    grants = entitlement_grants(
        config.entitlement_pattern or DEFAULT_ENTITLEMENT_PATTERN,
        frozenset(e for e in claims.get("eduperson_entitlement") or [] if isinstance(e, str)),
    )
    uids = sorted({a for accounts in grants.accounts.values() for a in accounts})
    return name, tuple(uids) or (name,)


async def authenticate(request: Request) -> Caller:
    """The dependency that every route uses: who calls, with which uid and group."""
    site = request.app.state.devsite  # the app's Devsite
    config: DevsiteConfig = site.config
    challenge = {"WWW-Authenticate": f'Basic realm="{config.site}", Bearer realm="{config.site}"'}
    header = request.headers.get("authorization")
    if not header:
        raise SiteError(401, "Log in with a user name and password or a bearer token.", challenge)
    found = check_credentials(config, header)
    oidc = None if found else await oidc_caller(config, site.http, header, site.userinfo)
    if found is None and oidc is None:
        raise SiteError(401, "The user name and password or the token are not valid.", challenge)
    if oidc is not None:
        name, method, uids = oidc[0], "OAUTH", oidc[1]
    else:
        assert found is not None
        name, method = found
        user = config.users.get(name)
        uids = user.uids if user else (name,)
    prefs = parse_preferences(request.headers.get("x-unicore-user-preferences") or "uid:" + uids[0])
    uid = prefs.get("uid", uids[0])
    if uid not in uids:
        raise SiteError(
            403, f"The uid '{uid}' is not available to {name}; use one of: " + ", ".join(uids) + "."
        )
    if prefs.get("role", "user") != "user":
        raise SiteError(403, f"The role '{prefs['role']}' is not available to {name}; use user.")
    dn = f"CN={name},O=Lablink development site {config.site}"
    return Caller(name, dn, uid, uids, prefs.get("group"), method)


Authenticated = Annotated[Caller, Depends(authenticate)]
