"""A password login for the embedded default and demos (one shared password).

Real sites log in with OpenID Connect; this is for `lablink up` on one machine.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import List, Unicode, default

from .vo import VOPages


class DemoAuthenticator(VOPages, Authenticator):
    password = Unicode(
        help="""The password of every demo user. Defaults to LABLINK_DEMO_PASSWORD.

        With no password set, nobody can log in.""",
    ).tag(config=True)

    @default("password")
    def _default_password(self) -> str:
        return os.environ.get("LABLINK_DEMO_PASSWORD", "")

    demo_users = List(
        Unicode(),
        help="""Who may log in. Defaults to LABLINK_DEMO_USERS (comma-separated) or 'demo'.""",
    ).tag(config=True)

    @default("demo_users")
    def _default_demo_users(self) -> list[str]:
        names = os.environ.get("LABLINK_DEMO_USERS", "demo")
        return [n.strip() for n in names.split(",") if n.strip()]

    @default("allowed_users")
    def _default_allowed_users(self) -> set[str]:
        return set(self.demo_users)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        name = self.normalize_username(data.get("username", ""))
        given = data.get("password", "").encode()
        if not self.password:
            self.log.error("demo login refused: no password is configured")
            return None
        ok = hmac.compare_digest(given, self.password.encode())
        if name in self.demo_users and ok:
            return name
        self.log.warning("demo login refused for %r", name[:64])
        return None
