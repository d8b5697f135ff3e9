"""The admin page of the hub (``/hub/lablink/admin``, JupyterHub admins only): every
active lab of the site with its person, server, system, VO or workshop, state, age and
handle (process, job, node, pod); filters; a Stop button per lab; each VO's and each
workshop's usage against its limit; the last failures with their sentences.

The backend answers everything (``GET /api/v1/admin/overview``, asked as the admin
with ``X-Lablink-Admin``); the hub stops labs:

- ``GET /hub/api/lablink/admin/overview``: the backend's overview as JSON, for the
  page to follow a stop without a reload.
- ``POST /hub/api/lablink/admin/labs/<id>/stop``: a lab the hub runs (its server's
  current lab) is stopped as JupyterHub's own admin stops a server, so the hub's
  state, the proxy's route and the backend stay in step; any other lab (a start the
  hub is still waiting for, or one the hub does not know) is stopped at the backend.

Both need a JupyterHub admin whose request may manage everybody's servers
(``admin:servers``); a cookie needs the XSRF token, as every JupyterHub API call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jupyterhub.handlers import BaseHandler
from tornado import web

from .client import FINAL, BackendClient, BackendError
from .home import STATE_WORDS
from .jsonapi import JsonAPI
from .vo import backend_of

LAB_ID = r"[A-Za-z0-9-]{1,64}"
NOT_ADMIN = "The admin page is for the hub's admins."
NO_BACKEND = "Lablink's backend does not answer just now; reload the page in a minute."


def age(created: Any, now: datetime) -> str:
    """How long ago a lab was created, in words: '4 min', '2 h 5 min', '3 d 4 h'."""
    try:
        then = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return ""
    minutes = max(0, int((now - then).total_seconds() // 60))
    hours, days = minutes // 60, minutes // 1440
    if days:
        return f"{days} d {hours % 24} h"
    if hours:
        return f"{hours} h {minutes % 60} min"
    return f"{minutes} min"


def handle_parts(handle: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What finds a lab on its system, as (label, value) pairs, in the words of its
    kind: a process id and port (local); a job id, its node and the tunnel's port
    (UNICORE, Slurm); a pod (Kubernetes). Only what the handle has."""
    if not handle:
        return []
    parts: list[tuple[str, str]] = []
    job = handle.get("job")
    if job:
        text = str(job)
        parts.append(("job", text.rstrip("/").rsplit("/", 1)[-1] if "/" in text else text))
    if handle.get("pod"):
        namespace = handle.get("namespace")
        parts.append(("pod", f"{namespace}/{handle['pod']}" if namespace else str(handle["pod"])))
    if handle.get("host"):
        port = handle.get("port")
        parts.append(("node", f"{handle['host']}:{port}" if port else str(handle["host"])))
    if handle.get("pid"):
        parts.append(("pid", str(handle["pid"])))
        if handle.get("port"):
            parts.append(("port", str(handle["port"])))
    if handle.get("local_port"):
        parts.append(("tunnel port", str(handle["local_port"])))
    return parts


def admin_rows(labs: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The page's rows: each active lab with its state in words, its age, its handle,
    and its VO or workshop as one group (kind, id, name people read)."""
    rows = []
    for lab in labs:
        if lab.get("workshop"):
            group = ("workshop", str(lab["workshop"]), str(lab.get("vo_display_name") or ""))
        elif lab.get("vo"):
            group = ("vo", str(lab["vo"]), str(lab.get("vo_display_name") or lab["vo"]))
        else:
            group = ("", "", "")
        rows.append(
            {
                "lab": lab,
                "state": STATE_WORDS.get(str(lab.get("state")), str(lab.get("state"))),
                "age": age(lab.get("created"), now),
                "handle": handle_parts(lab.get("handle")),
                "group_kind": group[0],
                "group": f"{group[0]}:{group[1]}" if group[0] else "",
                "group_name": group[2] or group[1],
            }
        )
    return rows


def percent(used: int, limit: int | None) -> int:
    """How full a quota is, 0 to 100 (0 without a limit)."""
    if not limit:
        return 100 if limit == 0 else 0
    return min(100, round(100 * used / limit))


EMPTY: dict[str, Any] = {"labs": [], "vos": [], "workshops": [], "failures": []}


class AdminPage(BaseHandler):
    """/hub/lablink/admin: the page."""

    @web.authenticated
    async def get(self) -> None:
        user = self.current_user
        if not user.admin:
            raise web.HTTPError(403, NOT_ADMIN)
        backend = backend_of(user)
        problem = ""
        try:
            found = await backend.admin_overview(user.name)
        except BackendError as exc:
            self.log.warning(
                "%s: admin page: the backend did not answer: %s", user.name, exc.detail
            )
            found, problem = EMPTY, NO_BACKEND
            self.set_status(502 if exc.status >= 500 else exc.status)
        now = datetime.now(UTC)
        html = await self.render_template(
            "lablink_admin.html",
            rows=admin_rows(found.get("labs") or [], now),
            vos=found.get("vos") or [],
            workshops=found.get("workshops") or [],
            failures=found.get("failures") or [],
            problem=problem,
            percent=percent,
            age=lambda t: age(t, now),
        )
        self.finish(html)


class AdminAPIBase(JsonAPI):
    def admin(self) -> Any:
        """The admin this request is for; 403 for anybody else."""
        user = self.current_user
        if user is None or getattr(user, "kind", "user") != "user" or not user.admin:
            raise web.HTTPError(403, NOT_ADMIN)
        if not self.has_scope("admin:servers"):
            raise web.HTTPError(
                403, "This token may not manage everybody's servers ('admin:servers' scope)."
            )
        return user

    @property
    def backend(self) -> BackendClient:
        return backend_of(self.current_user)


class AdminOverviewAPI(AdminAPIBase):
    async def get(self) -> None:
        user = self.admin()
        try:
            self.answer(await self.backend.admin_overview(user.name))
        except BackendError as exc:
            self.refuse(exc)


class AdminStopAPI(AdminAPIBase):
    async def post(self, lab_id: str) -> None:
        user = self.admin()
        backend = self.backend
        try:
            lab = await backend.admin_lab(lab_id, user.name)
            if lab is None:
                self.answer({"detail": f"No lab {lab_id!r}; it may have been removed."}, 404)
                return
            how = "none"  # it has ended already: nothing to stop
            if lab.get("state") not in FINAL:
                how = "hub" if await self._stop_in_hub(lab) else "backend"
                if how == "backend":
                    await backend.admin_stop(lab_id, user.name)
                self.log.info(
                    "admin %s stopped lab %s of %s:%s (through the %s)",
                    user.name, lab_id, lab.get("user"), lab.get("server_name"), how,
                )  # fmt: skip
            lab = await backend.admin_lab(lab_id, user.name) or lab
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer({"lab": lab, "stopped_by": how})

    async def _stop_in_hub(self, lab: dict[str, Any]) -> bool:
        """Stop the hub's server that runs ``lab`` as JupyterHub's admin does; False when
        the hub has no such server running it (unknown, stopped, or still starting)."""
        owner = self.find_user(str(lab.get("user")))
        server = str(lab.get("server_name") or "")
        if owner is None or server not in owner.orm_spawners:
            return False
        spawner = owner.spawners[server]
        if not spawner.active or spawner.pending or getattr(spawner, "lab_id", None) != lab["id"]:
            return False
        await self.stop_single_user(owner, server)
        return True


def handlers() -> list[tuple[str, Any]]:
    """The admin page and its API, for ``VOPages.get_handlers`` (paths under /hub)."""
    return [
        (r"/lablink/admin/?", AdminPage),
        (r"/api/lablink/admin/overview", AdminOverviewAPI),
        (rf"/api/lablink/admin/labs/({LAB_ID})/stop", AdminStopAPI),
    ]
