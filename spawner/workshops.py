"""Workshops in the hub: the organizer's and the participant's pages, the roster as
CSV, and the hub's JSON API for workshops (docs/reference.md "Workshops").

The backend decides everything (who organizes, who may join, the quota, the
window); these handlers ask it for the logged-in person (as a hub admin when the
person is one) and show its answers: a refusal is the backend's sentence with its
4xx status, on the page or as ``{"detail", "field"?}`` from the API.

- ``/hub/workshops``: the workshops the person organizes (an admin: all), those
  they joined, and the create form (what ``workshops.limits`` allows).
- ``/hub/workshops/<id>``: organizers see details, the invite link, the roster and
  the buttons; a participant (or anyone with ``?code=``) sees what they get, Join
  and Start. The page's forms post ``action`` back to the same address.
- ``/hub/workshops/<id>/roster.csv``: the roster for a spreadsheet.
- ``/hub/api/lablink/workshops[/<id>[/join|/code|/stop|/participants[/<name>[/stop]]]]``.

Stopping labs (one, a participant's, all) also stops the hub's servers of those
labs at once, so a participant's hub follows without waiting for the poll.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from jupyterhub.handlers import BaseHandler
from jupyterhub.spawner import SpawnException
from jupyterhub.utils import url_path_join
from tornado import web

from .client import FINAL, BackendClient, BackendError
from .home import STATE_WORDS
from .jsonapi import JsonAPI
from .vo import backend_of, identity

WORKSHOP_ID = r"[a-z][a-z0-9-]{1,39}"
PERSON = r"[^/]+"
# the states of a lab the backend no longer runs (or is ending)
ENDING = (*FINAL, "stopping", "stop_failed")
# PATCH and create take these; anything else is the backend's to refuse
NUMBERS = ("runtime", "nodes", "gpus", "cpu", "memory", "max_participants")


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: one that starts with = + - @ (or a tab or
    carriage return) would be a formula, so it gets a leading apostrophe."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def roster_csv(roster: dict[str, Any]) -> str:
    """The roster as CSV: a header row, then one row per participant."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["participant", "joined", "lab state", "system", "lab started", "lab id"])
    for person in roster.get("participants") or []:
        lab = person.get("lab") or {}
        writer.writerow(
            [
                csv_cell(person.get("name")),
                csv_cell(person.get("joined")),
                csv_cell(
                    STATE_WORDS.get(str(lab.get("state")), "not started") if lab else "no lab"
                ),
                csv_cell(lab.get("system_display_name") or lab.get("system") or ""),
                csv_cell(lab.get("started") or ""),
                csv_cell(lab.get("id") or ""),
            ]
        )
    return out.getvalue()


def when(value: Any) -> str:
    """An ISO time as people read it: 09:00 UTC on 4 December 2026."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return str(value)
    return f"{moment:%H:%M} UTC on {moment.day} {moment:%B %Y}"


def utc_field(value: str) -> str:
    """A datetime-local field's value (taken as UTC) as ISO 8601 with Z; '' stays ''."""
    value = value.strip()
    if value and len(value) <= 16 and "T" in value:  # 2026-12-04T09:00
        return value + ":00Z"
    return value


def datetime_local(value: Any) -> str:
    """An ISO time as a datetime-local field's value, in UTC."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return ""
    return f"{moment:%Y-%m-%dT%H:%M}"


def form_choices(limits: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The create form's choices from ``GET /workshops/limits``: (value, label) of each
    system with its partition or flavor (``<system>|<key>|<choice>``, or ``<system>``
    for a kind with neither), and of each image of a cloud system (``<system>|<image>``;
    the ones ``limits.images`` allows where it names some)."""
    presets: list[tuple[str, str]] = []
    images: list[tuple[str, str]] = []
    for system in limits.get("systems") or []:
        name = str(system.get("name", ""))
        shown = str(system.get("display_name") or name)
        fields = {f.get("key"): f for f in system.get("fields") or [] if isinstance(f, dict)}
        picked = next((fields[k] for k in ("partition", "flavor") if k in fields), None)
        if picked is not None and picked.get("choices"):
            for c in picked["choices"]:
                value = f"{name}|{picked['key']}|{c.get('value')}"
                presets.append((value, f"{shown}: {c.get('label') or c.get('value')}"))
        elif system.get("partitions"):  # a batch system's entry without fields
            for part in system["partitions"]:
                value = f"{name}|partition|{part.get('name')}"
                presets.append((value, f"{shown}: {part.get('display_name') or part.get('name')}"))
        else:
            presets.append((name, shown))
        allowed = system.get("images")
        if isinstance(allowed, list):
            images += [(f"{name}|{i}", f"{shown}: {i}") for i in allowed]
        elif "image" in fields:
            for c in fields["image"].get("choices") or []:
                value = f"{name}|{c.get('value')}"
                images.append((value, f"{shown}: {c.get('label') or c.get('value')}"))
    return presets, images


def labs(count: Any) -> str:
    """'1 lab', '3 labs'."""
    return f"{count} lab" if count == 1 else f"{count} labs"


def names(text: str) -> list[str]:
    """A list of names typed one per line or separated by commas or spaces."""
    return [n for n in text.replace(",", " ").split() if n]


# the notice of the last button pressed, for the page the browser is sent to next
NOTICE_COOKIE = "lablink-workshop-notice"


class WorkshopBase(BaseHandler):
    """What the workshop pages and the API share: the backend, acting for the person."""

    @property
    def backend(self) -> BackendClient:
        return backend_of(self.current_user)

    @property
    def who(self) -> tuple[str, bool]:
        user = self.current_user
        return str(user.name), bool(getattr(user, "admin", False))

    def invite_url(self, workshop: dict[str, Any]) -> str:
        """The absolute invite link of an organizer's view ('' without a code)."""
        code = workshop.get("code")
        if not code:
            return ""
        path = url_path_join(self.hub.base_url, "workshops", str(workshop["id"]))
        host = f"{self.request.protocol}://{self.request.host}"
        return f"{host}{path}?code={quote(str(code), safe='')}"

    def with_invite(self, workshop: dict[str, Any]) -> dict[str, Any]:
        if workshop.get("code"):
            return {**workshop, "invite_url": self.invite_url(workshop)}
        return workshop

    async def tell_backend_who(self) -> None:
        """The person's groups and entitlements, so the backend decides with the newest."""
        user = self.current_user
        try:
            await self.backend.put_user(user.name, await identity(user))
        except BackendError as exc:
            self.log.warning("%s: cannot update the backend: %s", user.name, exc.detail)

    async def stop_hub_servers(self, targets: set[tuple[str, str]]) -> int:
        """Stop the hub's servers (person, server name) whose lab the backend has stopped
        or is stopping, at once (the hub's own poll would notice it later)."""
        calls = []
        for name, server in sorted(targets):
            user = self.find_user(name)
            if user is None or server not in user.orm_spawners:
                continue
            spawner = user.spawners[server]
            if not spawner.active or spawner.pending or not getattr(spawner, "lab_id", None):
                continue  # a pending start ends by itself when its lab stops
            calls.append(self._stop_if_ended(user, server, spawner))
        if not calls:
            return 0
        done = await asyncio.gather(*calls, return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                self.log.warning("stopping a hub server after a workshop stop: %r", result)
        return sum(1 for result in done if result is True)

    async def _stop_if_ended(self, user: Any, server: str, spawner: Any) -> bool:
        lab = await self.backend.get(spawner.lab_id, user.name)
        if lab is not None and lab.get("state") not in ENDING:
            return False  # a lab outside the workshop, or not stopped: leave it
        if spawner.pending:
            return False
        await self.stop_single_user(user, server)
        return True

    async def stop_targets(self, workshop_id: str, only: str | None = None) -> set[tuple[str, str]]:
        """The (person, server) pairs of the workshop's labs that may be active: each
        participant's newest lab (``only``: that person's), and the organizers'
        servers named after the workshop."""
        name, admin = self.who
        targets: set[tuple[str, str]] = set()
        try:
            roster = await self.backend.workshop_participants(workshop_id, name, admin)
            found = await self.backend.workshop(workshop_id, name, admin)
        except BackendError:
            return targets  # the stop itself gets the backend's sentence
        for person in roster.get("participants") or []:
            lab = person.get("lab") or {}
            if only is not None and person.get("name") != only:
                continue
            targets.add((str(person.get("name")), str(lab.get("server_name", workshop_id))))
        if only is None:
            for organizer in [found.get("owner"), *(found.get("tutors") or [])]:
                if organizer:
                    targets.add((str(organizer), workshop_id))
        return targets


class WorkshopsPage(WorkshopBase):
    """/hub/workshops: the person's workshops and the create form."""

    async def _page(self, status: int = 200, error: str = "", field: str = "",
                    form: dict[str, str] | None = None) -> None:  # fmt: skip
        name, admin = self.who
        backend = self.backend
        problem = ""
        try:
            organized, joined, limits = await asyncio.gather(
                backend.workshops(name, admin),
                backend.workshops(name, admin, joined=True),
                backend.workshop_limits(name, admin),
            )
        except BackendError as exc:
            self.log.warning("%s: workshops: the backend did not answer: %s", name, exc.detail)
            organized, joined, limits = [], [], {"may_create": False, "why_not": ""}
            problem = "Lablink's backend does not answer just now; reload the page in a minute."
            status = status if status != 200 else 502
        presets, images = form_choices(limits)
        self.set_status(status)
        html = await self.render_template(
            "workshops.html",
            presets=presets,
            images=images,
            organized=[self.with_invite(w) for w in organized],
            joined=joined,
            limits=limits,
            error=error,
            error_field=field,
            problem=problem,
            form=form or {},
            when=when,
        )
        self.finish(html)

    @web.authenticated
    async def get(self) -> None:
        await self._page()

    @web.authenticated
    async def post(self) -> None:
        form = {k: self.get_body_argument(k, "") for k in self.request.body_arguments}
        form.pop("_xsrf", None)
        body = create_body(form)
        name, admin = self.who
        await self.tell_backend_who()
        try:
            created = await self.backend.create_workshop(name, body, admin)
        except BackendError as exc:
            status = exc.status if exc.status < 500 else 502
            await self._page(status, exc.detail, exc.field, form)
            return
        self.redirect(url_path_join(self.hub.base_url, "workshops", str(created["id"])), status=303)


def create_body(form: dict[str, str]) -> dict[str, Any]:
    """The create form's fields as the backend's create body. ``preset`` is
    ``<system>`` or ``<system>|<partition or flavor key>|<choice>``."""
    system, _, rest = form.get("preset", "").partition("|")
    key, _, choice = rest.partition("|")
    options: dict[str, Any] = {}
    if key and choice:
        options[key] = choice
    image = form.get("image", "")
    if image:
        image_system, _, image_name = image.partition("|")
        if image_system == system and image_name:
            options["image"] = image_name
    for number in ("runtime", "nodes", "gpus"):
        value = form.get(number, "").strip()
        if value:
            options[number] = int(value) if value.isdigit() else value
    if form.get("reservation", "").strip():
        options["reservation"] = form["reservation"].strip()
    body: dict[str, Any] = {
        "id": form.get("id", "").strip(),
        "title": form.get("title", "").strip(),
        "description": form.get("description", ""),
        "start": utc_field(form.get("start", "")),
        "end": utc_field(form.get("end", "")),
        "system": system,
        "options": options,
    }
    places = form.get("max_participants", "").strip()
    body["max_participants"] = int(places) if places.isdigit() else places
    if form.get("participants", "").strip():
        body["participants"] = names(form["participants"])
    if form.get("tutors", "").strip():
        body["tutors"] = names(form["tutors"])
    return body


class WorkshopPage(WorkshopBase):
    """/hub/workshops/<id>: the organizer's roster and buttons, or what a participant
    gets with Join and Start. POST ``action``: join, start, stop-all, stop, remove,
    extend, renew."""

    async def _page(self, workshop_id: str, status: int = 200, error: str = "",
                    notice: str = "") -> None:  # fmt: skip
        name, admin = self.who
        code = self.get_argument("code", "")
        workshop: dict[str, Any] | None = None
        roster: dict[str, Any] | None = None
        lab: dict[str, Any] | None = None
        try:
            workshop = await self.backend.workshop(workshop_id, name, admin, code)
            if workshop.get("role") == "organizer":
                roster = await self.backend.workshop_participants(workshop_id, name, admin)
            if workshop.get("role") == "organizer" or workshop.get("member"):
                own_labs = await self.backend.labs(name)
                mine = [each for each in own_labs if each.get("server_name") == workshop_id]
                lab = mine[-1] if mine else None
        except BackendError as exc:
            if workshop is None:
                status, error = (exc.status if exc.status < 500 else 502), exc.detail
            else:
                self.log.warning("%s: workshop %s: %s", name, workshop_id, exc.detail)
        server = self._server_state(workshop_id, lab)
        self.set_status(status)
        html = await self.render_template(
            "workshop.html",
            workshop_id=workshop_id,
            workshop=self.with_invite(workshop) if workshop else None,
            roster=roster,
            server=server,
            code=code,
            error=error,
            notice=notice,
            when=when,
            datetime_local=datetime_local,
            state_words=STATE_WORDS,
        )
        self.finish(html)

    def _server_state(self, workshop_id: str, lab: dict[str, Any] | None) -> dict[str, Any]:
        """The person's server of this workshop as the hub has it (and its lab)."""
        user = self.current_user
        state = STATE_WORDS.get(str(lab.get("state")), "stopped") if lab else "not started"
        ready = pending = False
        if workshop_id in user.orm_spawners:
            spawner = user.spawners[workshop_id]
            ready, pending = bool(spawner.ready), bool(spawner.pending)
            if ready:
                state = "running"
            elif pending:
                state = "starting"
        return {
            "state": state,
            "ready": ready,
            "pending": pending,
            "url": user.server_url(workshop_id),
            "progress_url": url_path_join(
                self.hub.base_url, "spawn-pending", user.escaped_name, workshop_id
            ),
            "lab": lab,
        }

    @web.authenticated
    async def get(self, workshop_id: str) -> None:
        # what the last button did (post, then redirect: a reload does not press it again)
        done = self.get_secure_cookie(NOTICE_COOKIE, max_age_days=1)
        if done is not None:
            self.clear_cookie(NOTICE_COOKIE, path=self.request.path)
        notice = done.decode("utf-8", "replace")[:500] if done else ""
        await self._page(workshop_id, notice=notice)

    @web.authenticated
    async def post(self, workshop_id: str) -> None:
        action = self.get_body_argument("action", "")
        name, admin = self.who
        backend = self.backend
        notice = ""
        try:
            if action == "join":
                await self.tell_backend_who()
                await backend.join_workshop(workshop_id, name, self.get_body_argument("code", ""))
            elif action == "start":
                await self._start(workshop_id)
                return
            elif action == "stop-all":
                targets = await self.stop_targets(workshop_id)
                answer = await backend.stop_workshop(workshop_id, name, admin)
                await self.stop_hub_servers(targets)
                notice = f"Stopping {labs(answer.get('stopping', 0))}."
            elif action in ("stop", "remove"):
                person = self.get_body_argument("name", "")
                targets = await self.stop_targets(workshop_id, only=person)
                if action == "stop":
                    answer = await backend.stop_participant(workshop_id, person, name, admin)
                    notice = f"Stopping {labs(answer.get('stopping', 0))} of {person}."
                else:
                    await backend.remove_participant(workshop_id, person, name, admin)
                    notice = f"{person} is no longer a participant."
                await self.stop_hub_servers(targets)
            elif action == "extend":
                end = utc_field(self.get_body_argument("end", ""))
                await backend.change_workshop(workshop_id, name, {"end": end}, admin)
                notice = "The workshop's end is changed."
            elif action == "renew":
                await backend.renew_workshop_code(workshop_id, name, admin)
                notice = "The invitation has a new code; the old link no longer works."
            else:
                await self._page(workshop_id, 400, "This page has no such button.")
                return
        except BackendError as exc:
            await self._page(workshop_id, exc.status if exc.status < 500 else 502, exc.detail)
            return
        if notice:
            self.set_secure_cookie(
                NOTICE_COOKIE, notice, expires_days=None, path=self.request.path, httponly=True
            )
        self.redirect(self.request.path, status=303)

    async def _start(self, workshop_id: str) -> None:
        """Spawn the named server <id> with the workshop's presets, then go to the hub's
        progress page; a refusal stays on this page as a sentence."""
        user = self.current_user
        try:
            # the workshop's VO decides how many labs (the backend refuses with its sentence)
            await self._check_named_server_request(
                user, workshop_id, workshop_id, check_limit=False
            )
        except web.HTTPError as exc:
            await self._page(workshop_id, exc.status_code, str(exc.log_message or exc.reason))
            return
        spawner = user.get_or_create_spawner(workshop_id, workshop_id, replace_failed=True)
        pending_url = url_path_join(
            self.hub.base_url, "spawn-pending", user.escaped_name, workshop_id
        )
        if spawner.ready:
            self.redirect(user.server_url(workshop_id), status=303)
            return
        if spawner.active:
            self.redirect(pending_url, status=303)
            return
        if spawner._spawn_future and spawner._spawn_future.done():
            spawner._spawn_future = None
        started = asyncio.ensure_future(
            self.spawn_single_user(user, workshop_id, options={"workshop": workshop_id})
        )
        await asyncio.wait([started], timeout=1)
        failure = started.exception() if started.done() else None
        if failure is not None:
            spawner.refused = None  # said here; the spawn page need not say it again
            if isinstance(failure, SpawnException):
                status = int(getattr(failure, "status_code", 0) or 500)
                message = str(getattr(failure, "jupyterhub_message", "") or failure)
            elif isinstance(failure, web.HTTPError):
                status, message = failure.status_code, str(failure.log_message or failure.reason)
            else:
                self.log.warning("%s: starting workshop %s: %r", user.name, workshop_id, failure)
                status, message = 500, "The lab could not be started; try again in a minute."
            await self._page(workshop_id, status if 400 <= status < 600 else 500, message)
            return
        self.redirect(pending_url, status=303)


class RosterCSV(WorkshopBase):
    """/hub/workshops/<id>/roster.csv: the organizer's roster for a spreadsheet."""

    @web.authenticated
    async def get(self, workshop_id: str) -> None:
        name, admin = self.who
        try:
            roster = await self.backend.workshop_participants(workshop_id, name, admin)
        except BackendError as exc:
            self.set_status(exc.status if exc.status < 500 else 502)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(exc.detail + "\n")
            return
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{workshop_id}-roster.csv"')
        self.set_header("Cache-Control", "no-store")
        self.finish(roster_csv(roster))


# -- the JSON API --------------------------------------------------------------------


class WorkshopAPIBase(JsonAPI, WorkshopBase):
    """JupyterHub's API handler (a user's token, or cookie + XSRF) asking the backend
    for the person; the backend's refusals pass through as ``{"detail", "field"?}``."""

    def person(self) -> Any:
        user = self.current_user
        if user is None:
            raise web.HTTPError(403, "This API needs a logged-in person or their API token.")
        if getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "Workshops are for people; a service has none.")
        # workshops start and stop servers: a token without the scope to manage the
        # person's servers (a lab's own token, say) may not act on them
        if not self.has_scope(f"servers!user={user.name}"):
            raise web.HTTPError(
                403,
                "This token may not manage your servers, so it may not act on workshops; "
                "use a token with the 'servers' scope.",
            )
        return user


class WorkshopsAPI(WorkshopAPIBase):
    async def get(self) -> None:
        user = self.person()
        joined = self.get_argument("joined", "").lower() == "true"
        try:
            found = await self.backend.workshops(user.name, bool(user.admin), joined=joined)
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer({"workshops": [self.with_invite(w) for w in found]})

    async def post(self) -> None:
        user = self.person()
        body = self.body()
        await self.tell_backend_who()
        try:
            created = await self.backend.create_workshop(user.name, body, bool(user.admin))
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer(self.with_invite(created), 201)


class WorkshopsLimitsAPI(WorkshopAPIBase):
    async def get(self) -> None:
        user = self.person()
        try:
            self.answer(await self.backend.workshop_limits(user.name, bool(user.admin)))
        except BackendError as exc:
            self.refuse(exc)


class WorkshopAPI(WorkshopAPIBase):
    async def get(self, workshop_id: str) -> None:
        user = self.person()
        code = self.get_argument("code", "")
        try:
            found = await self.backend.workshop(workshop_id, user.name, bool(user.admin), code)
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer(self.with_invite(found))

    async def patch(self, workshop_id: str) -> None:
        user = self.person()
        body = self.body()
        try:
            found = await self.backend.change_workshop(
                workshop_id, user.name, body, bool(user.admin)
            )
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer(self.with_invite(found))


class WorkshopJoinAPI(WorkshopAPIBase):
    async def post(self, workshop_id: str) -> None:
        user = self.person()
        code = self.body().get("code", "")
        await self.tell_backend_who()
        try:
            joined = await self.backend.join_workshop(
                workshop_id, user.name, code if isinstance(code, str) else "", bool(user.admin)
            )
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer(joined)


class WorkshopCodeAPI(WorkshopAPIBase):
    async def post(self, workshop_id: str) -> None:
        user = self.person()
        try:
            found = await self.backend.renew_workshop_code(workshop_id, user.name, bool(user.admin))
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer(self.with_invite(found))


class WorkshopStopAPI(WorkshopAPIBase):
    async def post(self, workshop_id: str) -> None:
        user = self.person()
        targets = await self.stop_targets(workshop_id)
        try:
            answer = await self.backend.stop_workshop(workshop_id, user.name, bool(user.admin))
        except BackendError as exc:
            self.refuse(exc)
            return
        answer["hub_servers_stopped"] = await self.stop_hub_servers(targets)
        self.answer(answer)


class ParticipantsAPI(WorkshopAPIBase):
    async def get(self, workshop_id: str) -> None:
        user = self.person()
        try:
            roster = await self.backend.workshop_participants(
                workshop_id, user.name, bool(user.admin)
            )
        except BackendError as exc:
            self.refuse(exc)
            return
        self.answer(roster)


class ParticipantAPI(WorkshopAPIBase):
    async def delete(self, workshop_id: str, person: str) -> None:
        user = self.person()
        targets = await self.stop_targets(workshop_id, only=person)
        try:
            answer = await self.backend.remove_participant(
                workshop_id, person, user.name, bool(user.admin)
            )
        except BackendError as exc:
            self.refuse(exc)
            return
        await self.stop_hub_servers(targets)
        if answer:
            self.answer(answer)
        else:
            self.set_status(204)
            self.finish()


class ParticipantStopAPI(WorkshopAPIBase):
    async def post(self, workshop_id: str, person: str) -> None:
        user = self.person()
        targets = await self.stop_targets(workshop_id, only=person)
        try:
            answer = await self.backend.stop_participant(
                workshop_id, person, user.name, bool(user.admin)
            )
        except BackendError as exc:
            self.refuse(exc)
            return
        answer["hub_servers_stopped"] = await self.stop_hub_servers(targets)
        self.answer(answer)


def handlers() -> list[tuple[str, Any]]:
    """The workshop pages and API, for ``VOPages.get_handlers`` (paths under /hub)."""
    w, p = WORKSHOP_ID, PERSON
    api = "/api/lablink/workshops"
    return [
        (r"/workshops/?", WorkshopsPage),
        (rf"/workshops/({w})/?", WorkshopPage),
        (rf"/workshops/({w})/roster\.csv", RosterCSV),
        (rf"{api}/?", WorkshopsAPI),
        (rf"{api}/limits", WorkshopsLimitsAPI),
        (rf"{api}/({w})/?", WorkshopAPI),
        (rf"{api}/({w})/join", WorkshopJoinAPI),
        (rf"{api}/({w})/code", WorkshopCodeAPI),
        (rf"{api}/({w})/stop", WorkshopStopAPI),
        (rf"{api}/({w})/participants/?", ParticipantsAPI),
        (rf"{api}/({w})/participants/({p})", ParticipantAPI),
        (rf"{api}/({w})/participants/({p})/stop", ParticipantStopAPI),
    ]
