"""The hub's home page as a dashboard of the person's labs, and JupyterHub's limit
of named servers made to follow the active VO.

- ``LablinkHomeHandler``: JupyterHub's home page with, for each of the person's
  servers (the default one and the named ones), what the backend knows of its
  newest lab: system, partition or flavor, VO, state, wall time, last output of
  a failure. The backend is asked for the logged-in person's labs only.
- ``named_server_limit``: for ``JupyterHub.named_server_limit_per_user``. JupyterHub
  counts created named servers, stopped ones too; the VO counts active labs. The
  limit is the person's named servers plus the labs the VO still admits for them,
  so a new server is allowed exactly when the VO would admit its lab; when the VO
  is full, creating one is refused with the VO's sentence.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jupyterhub.handlers.pages import AdminHandler, HomeHandler
from tornado import web

from .client import BackendError
from .vo import backend_of

# the backend's states, in the words the page shows
STATE_WORDS = {
    "accepted": "queued",
    "submitted": "queued",
    "queued": "queued",
    "starting": "starting",
    "running": "running",
    "stopping": "stopping",
    "stop_failed": "stopping",
    "stopped": "stopped",
    "failed": "failed",
}


def _active_vo(data: dict[str, Any]) -> dict[str, Any] | None:
    return next((vo for vo in data.get("vos") or [] if vo.get("active")), None)


def lab_rows(
    servers: dict[str, bool], labs: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """One row per server (``servers``: name -> whether the hub has it active; the
    default one first, then the named ones by name) with the newest lab the backend
    has for it (None: never started), its state in words and the minutes left of its
    wall time. Labs of servers the hub no longer has are left out."""
    newest: dict[str, dict[str, Any]] = {}
    for each in labs:  # oldest first: the newest wins
        newest[each.get("server_name", "")] = each
    rows = []
    for name in sorted(servers, key=lambda n: (n != "", n)):
        lab, active = newest.get(name), servers[name]
        state = STATE_WORDS.get(str(lab.get("state")), "stopped") if lab else "not started"
        if active and state in ("not started", "stopped", "failed"):
            state = "starting"  # the hub has begun; the backend has no lab for it yet
        rows.append(
            {
                "name": name,
                "lab": lab,
                "state": state,
                "active": active or state in ("queued", "starting", "running", "stopping"),
                "minutes_left": minutes_left(lab, now),
            }
        )
    return rows


def minutes_left(lab: dict[str, Any] | None, now: datetime) -> int | None:
    """Whole minutes left of a running lab's wall time (None: none, or not running)."""
    if not lab or lab.get("state") != "running" or not lab.get("ends"):
        return None
    ends = datetime.fromisoformat(str(lab["ends"]))
    return max(0, int((ends - now).total_seconds() // 60))


class LablinkHomeHandler(HomeHandler):
    """JupyterHub's home page, with the person's labs as the backend knows them."""

    @web.authenticated
    async def get(self) -> None:
        user = self.current_user
        backend = backend_of(user)
        try:
            labs = await backend.labs(user.name)
            vos = await backend.get_user(user.name)
            problem = ""
        except BackendError as exc:
            self.log.warning("%s: home: the backend did not answer: %s", user.name, exc.detail)
            labs, vos = [], {"vo": None, "vos": []}
            problem = (
                "Lablink's backend does not answer just now, so your labs' details are "
                "missing; reload the page in a minute."
            )
        # only this person's labs, whatever the backend answered
        labs = [lab for lab in labs if lab.get("user") == user.name]
        names = {s.name for s in user.orm_user._orm_spawners} | {""}
        servers = {name: bool(user.spawners[name].active) for name in names}
        self._lablink = {
            "rows": lab_rows(servers, labs, datetime.now(UTC)),
            "vo": _active_vo(vos),
            "vos": vos.get("vos") or [],
            "problem": problem,
        }
        await super().get()

    def render_template(self, name: str, sync: bool = False, **ns: Any) -> Any:
        if name == "home.html":
            ns["lablink"] = getattr(self, "_lablink", None)
        return super().render_template(name, sync=sync, **ns)


async def named_server_limit(handler: Any) -> int:
    """``JupyterHub.named_server_limit_per_user`` that follows the active VO: the
    person's named servers plus the labs the VO still admits for them; 0 (no limit)
    when the VO has no limits or cannot be asked (the backend still decides). When
    the VO admits no more, creating a server is refused with the VO's sentence (429)."""
    user = handler.current_user
    spawner = getattr(user, "spawner", None)
    backend = getattr(spawner, "backend", None)
    if user is None or backend is None:
        return 0
    try:
        data = await backend.get_user(user.name)
    except BackendError as exc:
        handler.log.warning("%s: cannot ask the VO's quota: %s", user.name, exc.detail)
        return 0
    args = getattr(handler, "path_args", None) or []
    server = args[-1] if len(args) >= 2 and isinstance(args[-1], str) else ""
    # a workshop's server is named after the workshop, whose VO accounts its lab
    # whichever VO is active: its quota decides
    workshop = next((v for v in data.get("vos") or [] if server and v.get("name") == server), None)
    vo = workshop or _active_vo(data)
    if vo is None:
        return 0
    quota = vo.get("quota") or {}
    free = [
        q["limit"] - q["used"]
        for q in (quota.get("labs_per_user"), quota.get("labs"))
        if isinstance(q, dict) and isinstance(q.get("limit"), int)
    ]
    if not free:
        return 0
    named = [name for name in user.orm_user.orm_spawners if name]
    if min(free) > 0:
        return len(named) + min(free)
    # the VO is full: refuse a new server (the spawn page's and the API's paths end
    # with its name); a page that only shows the limit, or a server that exists, passes
    creating = bool(server) and server not in named
    if isinstance(handler, HomeHandler | AdminHandler) or not creating:
        return 0
    raise web.HTTPError(429, quota.get("full") or "Your VO admits no more labs now.")
