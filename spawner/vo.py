"""The hub's pages for VOs, and what the hub tells the backend about a person.

- ``identity(user)``: the person's groups (the hub's, which the OIDC login
  keeps in step with the claims) and entitlements (from ``auth_state``).
- ``/hub/lablink/vo``: GET shows the person's VOs with their quota (HTML, or
  JSON with ``?format=json`` for the header's switcher); POST chooses the
  active VO. The backend decides membership; this page only asks it.
- ``LablinkSpawnHandler``: JupyterHub's spawn page, except that a person whose
  login cannot be refreshed before a spawn is sent to log in again instead of
  getting an error page.

They, the home page of :mod:`spawner.home`, the workshop pages and API of
:mod:`spawner.workshops` and the admin page of :mod:`spawner.admin`, are added to the hub by the
authenticators (``VOPages.get_handlers``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from jupyterhub.handlers import BaseHandler
from jupyterhub.handlers.pages import SpawnHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httputil import url_concat

from .client import BackendClient, BackendError

EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,128}@[^@\s\x00-\x1f\x7f]{1,125}")


async def identity(user: Any) -> dict[str, list[str]]:
    """What the backend needs to know of a person: hub groups, entitlements and, from an
    OIDC login, the e-mail address the provider says is verified (a workshop's
    allow-list may name it)."""
    state = await user.get_auth_state() or {}
    entitlements = state.get("entitlements") or []
    return {
        "groups": sorted(g.name for g in getattr(user, "groups", [])),
        "entitlements": sorted(e for e in entitlements if isinstance(e, str)),
        "emails": verified_emails(state),
    }


def verified_emails(auth_state: dict[str, Any]) -> list[str]:
    """The ``email`` claim of the login's user info when ``email_verified`` is true (an
    address nobody confirmed could be anybody's); none without an OIDC login."""
    claims = auth_state.get("oauth_user")
    if not isinstance(claims, dict) or claims.get("email_verified") is not True:
        return []
    email = claims.get("email")
    if not isinstance(email, str) or not EMAIL.fullmatch(email):
        return []
    return [email]


def backend_of(user: Any) -> BackendClient:
    backend = getattr(user.spawner, "backend", None)
    if not isinstance(backend, BackendClient):
        raise web.HTTPError(501, "VOs need the Lablink spawner.")
    return backend


def _local_next(handler: BaseHandler, target: str) -> str:
    """``target`` if it is a path on this hub, else the hub's home page."""
    parts = urlsplit(target)
    if target.startswith("/") and not target.startswith("//") and not parts.netloc:
        if "\\" not in target and parts.path.startswith(handler.base_url):
            return target
    return url_path_join(handler.hub.base_url, "home")


async def _workshops_link(user: Any) -> bool:
    """Whether the header links the workshops page: for people who may create
    workshops, organize one, or joined one."""
    backend = backend_of(user)
    admin = bool(getattr(user, "admin", False))
    try:
        limits = await backend.workshop_limits(user.name, admin)
        if limits.get("may_create"):
            return True
        return bool(
            await backend.workshops(user.name, admin)
            or await backend.workshops(user.name, admin, joined=True)
        )
    except BackendError:
        return False


class VOHandler(BaseHandler):
    """The person's VOs: list them with quota, and choose the active one."""

    async def _vos(self, user: Any) -> dict[str, Any]:
        backend = backend_of(user)
        try:
            return await backend.put_user(user.name, await identity(user))
        except BackendError as exc:
            raise web.HTTPError(502 if exc.status >= 500 else exc.status, exc.detail) from None

    @web.authenticated
    async def get(self) -> None:
        user = self.current_user
        data = await self._vos(user)
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            workshops = await _workshops_link(user)
            self.finish({"vo": data["vo"], "vos": data["vos"], "workshops": workshops})
            return
        html = await self.render_template(
            "lablink_vo.html", vos=data["vos"], active=data["vo"], next_url=""
        )
        self.finish(html)

    @web.authenticated
    async def post(self) -> None:
        user = self.current_user
        chosen = self.get_body_argument("vo", "")
        await self._vos(user)  # the backend decides with the newest claims
        try:
            await backend_of(user).put_user_vo(user.name, chosen)
        except BackendError as exc:
            raise web.HTTPError(exc.status if exc.status < 500 else 502, exc.detail) from None
        self.redirect(_local_next(self, self.get_body_argument("next", "")))


class LablinkSpawnHandler(SpawnHandler):
    """The spawn page; a login that cannot be refreshed sends the person to log in, and
    a refused start shows the form again with the person's choices and the sentence."""

    server_name = ""

    @property
    def template_namespace(self) -> dict[str, Any]:
        namespace = dict(super().template_namespace)
        namespace["lablink_server_name"] = self.server_name  # the heading of spawn.html
        return namespace

    async def _render_form(
        self, for_user: Any, spawner_options_form: str, message: str = "", html_message: str = ""
    ) -> Any:
        # JupyterHub renders the default server's form after a failed start; the form of
        # the server that was refused has the person's choices
        spawner = for_user.spawners.get(self.server_name or "")
        refused = getattr(spawner, "refused", None)
        if refused is not None:
            # also when refused after the progress page took over: say it here again
            # (without the progress page's link back to this form)
            message = refused.jupyterhub_message
            html_message = refused.form_html
            if spawner is not for_user.spawner:  # JupyterHub rendered the default's form
                spawner_options_form = await spawner.get_options_form()
            spawner.refused = None  # shown once
        return await super()._render_form(for_user, spawner_options_form, message, html_message)

    def get(self, user_name: str | None = None, server_name: str = "") -> Any:
        self.server_name = server_name or ""
        return super().get(user_name, server_name)

    async def post(self, user_name: str | None = None, server_name: str = "") -> Any:
        self.server_name = server_name or ""
        user = self.current_user
        if user is not None and self.authenticator.refresh_pre_spawn:
            if user_name in (None, user.name) and await self.refresh_auth(user, force=True) is None:
                self.log.info("login of %s has expired; sending them to log in", user.name)
                self.clear_login_cookie()
                self.redirect(url_concat(self.get_login_url(), {"next": self.request.path}))
                return None
        return await super().post(user_name, server_name)


class VOPages:
    """Mixin for authenticators: adds the VO page and the spawn page above."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        from .admin import handlers as admin_handlers
        from .home import LablinkHomeHandler  # it imports this module
        from .workshops import handlers as workshop_handlers

        own: list[tuple[str, Any]] = [
            (r"/home", LablinkHomeHandler),
            (r"/lablink/vo", VOHandler),
            (r"/spawn", LablinkSpawnHandler),
            (r"/spawn/([^/]+)", LablinkSpawnHandler),
            (r"/spawn/([^/]+)/([^/]+)", LablinkSpawnHandler),
            *workshop_handlers(),
            *admin_handlers(),
        ]
        return own + list(super().get_handlers(app))  # type: ignore[misc]
