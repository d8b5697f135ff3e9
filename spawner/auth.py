"""The demo login of the embedded default: JupyterHub's own SharedPasswordAuthenticator.

Any name logs in with the one demo password (LABLINK_DEMO_PASSWORD, at least eight
characters), so several people, or a workshop, can be tried on one machine. Whoever
knows the password is trusted like the machine's owner (the site file says
``login: demo``); real sites log in with OpenID Connect.

The hub's admins (``LABLINK_HUB_ADMINS``) log in with their own password,
LABLINK_DEMO_ADMIN_PASSWORD (JupyterHub's ``admin_password``: 32 characters or
more, not the demo password); without it no admin can log in.
"""

from __future__ import annotations

import os

from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets import default

from .vo import VOPages


class DemoAuthenticator(VOPages, SharedPasswordAuthenticator):
    @default("user_password")
    def _default_user_password(self) -> str | None:
        return os.environ.get("LABLINK_DEMO_PASSWORD") or None

    @default("admin_password")
    def _default_admin_password(self) -> str | None:
        return os.environ.get("LABLINK_DEMO_ADMIN_PASSWORD") or None

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        return True  # any name: the shared password is the gate
