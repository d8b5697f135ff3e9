"""Bearer tokens between the services, and who a request acts for.

Tokens come from the site file (by the name of the environment variable that
holds each) and are compared in constant time. A ``hub`` token acts for the
user named in the ``X-Lablink-User`` header (and as an admin with
``X-Lablink-Admin: true``, only if the site lets that token: ``admin_header``);
an ``admin`` token may do anything.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request

from .settings import TokenSettings

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
USER_NAME_HELP = "letters, digits and . _ @ + - (at most 128, starting with a letter or digit)"


@dataclass(frozen=True)
class Principal:
    token_name: str
    role: str
    user: str | None
    admin: bool

    def may_see(self, owner: str) -> bool:
        return self.admin or (self.user is not None and self.user == owner)


class TokenChecker:
    def __init__(self, secrets: dict[str, TokenSettings]):
        self._secrets = [(s.encode(), t) for s, t in secrets.items()]

    def find(self, presented: str) -> TokenSettings | None:
        found = None
        given = presented.encode()
        for secret, tok in self._secrets:  # look at every one: constant time per request
            if hmac.compare_digest(secret, given):
                found = tok
        return found


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request) -> Principal:
    checker: TokenChecker = request.app.state.tokens
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        raise unauthorized("This API needs a bearer token in the Authorization header.")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("The Authorization header must be 'Bearer <token>'.")
    tok = checker.find(value.strip())
    if tok is None:
        raise unauthorized("The bearer token is not valid for this service.")
    user = request.headers.get("x-lablink-user")
    if user is not None and not USER_NAME.fullmatch(user):
        raise HTTPException(400, f"The header X-Lablink-User must be {USER_NAME_HELP}.")
    hub_says_admin = request.headers.get("x-lablink-admin", "").lower() == "true"
    if hub_says_admin and tok.role != "admin" and not tok.admin_header:
        raise HTTPException(
            403,
            f"The token {tok.name!r} may not act as an admin (X-Lablink-Admin); use an admin "
            "token, or set admin_header: true on this token in the site file.",
        )
    return Principal(
        token_name=tok.name,
        role=tok.role,
        user=user,
        admin=tok.role == "admin" or hub_says_admin,
    )
