"""Slurm's JSON Web Tokens, minted as ``scontrol token username=U lifespan=S`` does:
HS256 over ``{"iat", "exp", "sun"}`` with the cluster's key
(``AuthAltParameters=jwt_key=`` in slurm.conf).

The key is a master key: a token it signs acts as any user of the cluster, and
slurmctld cannot tell the backend's tokens from its own. It is read once at
start and kept in memory; tokens are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

RENEW_BEFORE = 60.0  # seconds: a token is minted again this long before it expires


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(key: bytes, user: str, lifespan: int, now: float | None = None) -> str:
    """A token for ``user`` valid ``lifespan`` seconds from ``now``."""
    issued = int(time.time() if now is None else now)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"exp": issued + lifespan, "iat": issued, "sun": user}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


class Tokens:
    """One token per user name, minted again shortly before it expires."""

    def __init__(self, key: bytes, lifespan: int):
        self._key = key
        self.lifespan = lifespan
        self._cache: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"Tokens(lifespan={self.lifespan}, users={len(self._cache)})"  # no key, no token

    def token(self, user: str) -> str:
        now = time.time()
        cached = self._cache.get(user)
        if cached is not None and cached[1] - RENEW_BEFORE > now:
            return cached[0]
        token = mint(self._key, user, self.lifespan, now)
        self._cache[user] = (token, now + self.lifespan)
        return token
