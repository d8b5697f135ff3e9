"""The lab manager: runs the drivers and moves labs through their states.

It is the only caller of the drivers. One task per lab follows the lab from
start to its end (``_start_then_watch``); a stop cancels that task first, so
a lab that is being stopped is never reported as having ended by itself.

With several replicas (backend/replicas.py) each active lab has one owner, the
replica that runs its tasks: a lab is owned by the replica that admitted it, and
a replica adopts (:meth:`LabManager.adopt`) the labs it claims from a dead one. The
writes of a lab's task are fenced: they carry ``owner = this replica``, and one that
finds another owner raises NotOwner, which ends the task quietly. A stop asked on
any replica is recorded there and carried out by the owner (``stop:<lab>`` on the
bus); a new access token is stored sealed and the owner told (``token:<lab>``).

Every lab reaches a final state: an exception in a lab's task moves it to
``failed`` with a sentence. The one exception is a stop the system did not
confirm: the lab goes to ``stop_failed``, stays active (its quota and server
name stay taken, as its job may still run) and the stop is tried again with
backoff until the job is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from .bus import Bus
from .catalog import OptionError, validate_options
from .db import utcnow
from .health import db_unreachable, error_line
from .observe import BackendMetrics, lab_fields
from .retry import Backoff
from .settings import Settings
from .states import STARTING_UP, InvalidTransition, LabState
from .store import Admission, Lab, NotOwner, Store, Usage, UserRecord, clean_text
from .systems.driver import Driver, LabContext, LabEnded, LabFailed, Peers, lab_log_name
from .systems.registry import kinds
from .vos import Identity, memberships
from .workshops import PersonView, WorkshopStore, person_settings, window_refusal

log = logging.getLogger("lablink.backend.labs")


class NotInVO(Exception):
    """The person may not start a lab in the VO they named (or in any); for the person."""


def quota_sentence(vo: str, limits: Admission, usage: Usage) -> str:
    """How full the VO is with this lab counted, for the spawn page (``vo``: its
    display name)."""
    labs = f"{usage.labs} of {limits.labs}" if limits.labs is not None else f"{usage.labs}"
    mine = f"{usage.user_labs} of {limits.labs_per_user}"
    if limits.labs_per_user is None:
        mine = f"{usage.user_labs}"
    return f"VO {vo}: {labs} labs in use; yours: {mine}."


UNREAD = object()  # active_vo: the person's record is yet to be read

INTERNAL_ERROR = (
    "An internal error stopped the lab; the site's admins can find the details in the backend log."
)
STOP_INTERNAL_ERROR = "an internal error (the backend log has the details)"


class LabManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        http: httpx.AsyncClient,
        system_secrets: dict[str, str] | None = None,
        peers: Peers | None = None,
        bus: Bus | None = None,
    ):
        self.settings = settings
        self.store = store
        self.bus = bus
        if bus is not None:
            bus.on("stop", self._stop_asked)
            bus.on("token", self._token_changed)
            bus.on("resync", self._stops_missed)
        self.system_secrets = dict(system_secrets or {})
        self.peers = peers or Peers()
        # the person's OIDC access token per lab (stored only sealed, in lab_secrets)
        self._access_tokens: dict[str, str] = {}
        # one driver per kind the site uses
        used = {system.kind for system in settings.systems.values()}
        self.drivers: dict[str, Driver[Any]] = {
            name: kind.driver(http) for name, kind in kinds().items() if name in used
        }
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        # labs handed back after the database failed under their task (see _owned)
        self._hand_backs: set[asyncio.Task[None]] = set()
        # set to try a failed stop again at once (a person asked to stop again)
        self._stop_now: dict[str, asyncio.Event] = {}
        # waits between tries of a stop the system did not confirm, in seconds
        self.stop_retry_first = 5.0
        self.stop_retry_most = 300.0
        self.workshops = WorkshopStore(store.engine, store.writing)
        self.metrics: BackendMetrics | None = None  # set by the app (backend/observe.py)

    # -- contexts -----------------------------------------------------------

    def driver_for(self, lab: Lab) -> Driver[Any]:
        return self.drivers[self.settings.systems[lab.system].kind]

    @property
    def me(self) -> str | None:
        """This replica's id (None: a manager without replicas; its writes are not
        fenced)."""
        return self.store.replica_id

    async def _record(self, lab_id: str, state: LabState, message: str, **kw: Any) -> Lab:
        """A write of the task that follows the lab: fenced (NotOwner)."""
        return await self.store.record(lab_id, state, message, owner=self.me, **kw)

    def context(self, lab: Lab, env: dict[str, str] | None = None) -> LabContext[Any]:
        me = self.me  # a task begun for an earlier id of this replica is fenced off

        async def report(
            state: LabState, message: str, *, detail: str = "", progress: int | None = None
        ) -> None:
            await self.store.record(
                lab.id, state, message, detail=detail, progress=progress, owner=me
            )

        async def save(handle: dict[str, Any]) -> None:
            await self.store.save_handle(lab.id, handle, owner=me)

        return LabContext(
            lab_id=lab.id,
            user_name=lab.user_name,
            server_name=lab.server_name,
            system_name=lab.system,
            system=self.settings.systems[lab.system],
            options=lab.options,
            handle=dict(lab.handle),
            state_dir=self.settings.state_dir.resolve(),
            report=report,
            save_handle=save,
            env=dict(env or {}),
            token_source=lambda: self._access_tokens.get(lab.id),
            secret=self.system_secrets.get(lab.system),
            peers=self.peers,
            vo=lab.vo or "",
        )

    # -- VOs --------------------------------------------------------------------

    async def view(self, identity: Identity) -> PersonView:
        """The site as this person sees it: the site's VOs and their workshops as VOs."""
        return await person_settings(self.settings, self.workshops, identity)

    async def active_vo(
        self,
        identity: Identity,
        requested: str | None = None,
        view: PersonView | None = None,
        record: UserRecord | object | None = UNREAD,
    ) -> str | None:
        """The VO a lab of this person belongs to: ``requested``, else the one they chose,
        else their first. None on a site without VOs (unless they chose a workshop).
        ``record``: the person as stored, if the caller read it already. Raises NotInVO."""
        view = view or await self.view(identity)
        vos = view.settings.vos
        if not vos:
            return requested
        mine = memberships(vos, identity)
        if not mine:
            raise NotInVO(
                "You are not a member of any VO of this site, so you cannot start a lab; "
                "ask the site's support or your workshop's organizers to add you to one."
            )
        if requested:
            if requested not in mine:
                known = vos.get(requested)
                named = (known.display_name or requested) if known else repr(requested[:64])
                yours = ", ".join(vos[v].display_name or v for v in mine)
                raise NotInVO(f"You are not a member of VO {named}; your VOs: {yours}.")
            return requested
        if record is UNREAD:
            record = await self.store.get_user(identity.user)
        if isinstance(record, UserRecord) and record.vo in mine:
            return record.vo
        if not self.settings.vos:  # a site without VOs: a workshop only when chosen
            return None
        return mine[0]

    async def usage(self, identity: Identity, view: PersonView | None = None) -> dict[str, Usage]:
        """Active labs of each of the person's VOs, and theirs in it."""
        view = view or await self.view(identity)
        return {
            vo: await self.store.usage(vo, identity.user)
            for vo in memberships(view.settings.vos, identity)
        }

    async def stop_workshop_labs(self, workshop_id: str, user: str | None = None) -> int:
        """Begin stopping the active labs of a workshop (of one person in it); how many."""
        labs = await self.store.list_labs(user_name=user, active_only=True)
        mine = [lab for lab in labs if lab.vo == workshop_id]
        for lab in mine:
            await self.stop(lab)
        return len(mine)

    # -- public operations ---------------------------------------------------

    async def create(
        self,
        *,
        user_name: str,
        server_name: str,
        vo: str | None,
        options: dict[str, Any],
        env: dict[str, str],
        groups: list[str] | None = None,
        entitlements: list[str] | None = None,
        access_token: str | None = None,
        workshop: str | None = None,
        emails: list[str] | None = None,
        request_id: str | None = None,
    ) -> Lab:
        """Validate, admit against the VO's quota, store (state ``accepted``) and start a
        lab in the background.

        Raises NotInVO, OptionError for bad options, QuotaExceeded when the VO is
        full and ServerNameBusy if the user has an active lab with this server
        name; nothing is stored then. With ``workshop``, the lab is one of that
        workshop (the person's or one they organize) with its presets as options.
        ``env`` and ``access_token`` are stored sealed with the lab when the site has a
        key (another replica can launch it); ``request_id``: the Idempotency-Key.
        """
        began = time.monotonic()
        identity = Identity(user_name, frozenset(groups or ()), frozenset(entitlements or ()))
        change = None
        record: UserRecord | object | None = UNREAD
        if self.settings.vos or self.settings.workshops is not None:
            # the hub's newest word on the person, for the catalog too: stored in the
            # transaction that admits the lab (one write less per start of a new person)
            record = await self.store.get_user(user_name)
            change = self.store.identity_change(
                record, identity.groups, identity.entitlements, emails
            )
        try:
            vo, system_name, clean, admission, message = await self._admission(
                identity, vo, options, workshop, record
            )
        except Exception:
            if change is not None:  # refused before its admission: stored all the same
                await self.store.put_identity(
                    user_name, identity.groups, identity.entitlements, emails
                )
            raise
        lab = await self.store.create_lab(
            user_name=user_name,
            server_name=server_name,
            system=system_name,
            vo=vo,
            options=clean,
            message=message,
            admission=admission,
            identity=change,
            env=env,
            access_token=access_token,
            request_id=request_id,
        )
        if access_token:
            self._access_tokens[lab.id] = access_token
        log.info(
            "%s: accepted on system %s in %.0f ms",
            lab_log_name(lab.user_name, lab.server_name, lab.id),
            system_name,
            (time.monotonic() - began) * 1000,
            extra=lab_fields(lab),
        )
        if self.metrics is not None:
            self.metrics.accepted(lab)
        self._follow(lab.id, self._start_then_watch(lab, env), "lab")
        return lab

    def _follow(self, lab_id: str, work: Any, what: str) -> None:
        """Run ``work`` as the task that follows the lab (it ends quietly on NotOwner)."""
        self._runs[lab_id] = asyncio.create_task(self._owned(lab_id, work), name=f"{what}-{lab_id}")

    async def _owned(self, lab_id: str, work: Any) -> None:
        try:
            await work
        except NotOwner:
            log.info("lab %s: another replica follows it now; this one lets go", lab_id)
            self._let_go(lab_id)
        except Exception as exc:
            if not db_unreachable(exc):
                raise
            # the database failed under the lab's task (it refused a connection, one
            # was cut): the lab must not stay half-followed (a stop done but not
            # recorded), so it goes back to be claimed again, here or by another replica
            log.warning(
                "lab %s: the database failed while following it (%s); it is handed back "
                "to be taken up again",
                lab_id,
                error_line(exc)[:200],
            )
            self._let_go(lab_id)
            if self.me is not None:
                task = asyncio.create_task(self._hand_back(lab_id, self.me), name=f"back-{lab_id}")
                self._hand_backs.add(task)
                task.add_done_callback(self._hand_backs.discard)

    def _let_go(self, lab_id: str) -> None:
        """Forget a lab this process no longer follows (its task is ending)."""
        if self._runs.get(lab_id) is asyncio.current_task():
            del self._runs[lab_id]
        if self._stops.get(lab_id) is asyncio.current_task():
            del self._stops[lab_id]
        self._stop_now.pop(lab_id, None)
        self._access_tokens.pop(lab_id, None)

    async def _hand_back(self, lab_id: str, me: str) -> None:
        """Give up the ownership of a lab whose task the database failed, once the
        database answers again (tries for up to a minute; if it never answers, this
        replica's lease lapses and the others take the lab anyway)."""
        backoff = Backoff(60.0, first=0.5, most=8.0)
        while True:
            try:
                if await self.store.release(lab_id, me) and self.bus is not None:
                    await self.bus.send("orphans", me)
                return
            except Exception as exc:
                if not db_unreachable(exc):
                    log.warning("lab %s: could not be handed back: %s", lab_id, exc)
                    return
            if not await backoff.wait():
                return

    async def _admission(
        self,
        identity: Identity,
        vo: str | None,
        options: dict[str, Any],
        workshop: str | None,
        record: UserRecord | object | None,
    ) -> tuple[str | None, str, dict[str, Any], Admission | None, Callable[[Usage | None], str]]:
        """A start checked before its admission: its VO, system, clean options, the VO's
        limits and its first event's sentence. Raises NotInVO or OptionError."""
        view = await self.view(identity)
        if workshop is not None:
            ws = view.workshops.get(workshop)
            if ws is None:
                raise NotInVO(
                    f"You have not joined a workshop {workshop!r}; open its invitation link "
                    "and join it first."
                )
            if options:
                raise OptionError(
                    "options", "A lab of a workshop takes the workshop's presets; send no options."
                )
            vo, options = workshop, {**ws.options, "system": ws.system}
        vo = await self.active_vo(identity, vo, view, record)
        if vo is not None and vo in view.workshops:
            refusal = window_refusal(view.workshops[vo], utcnow())
            if refusal:
                raise NotInVO(refusal)
        settings = view.settings
        system_name, clean = validate_options(
            settings,
            options,
            identity.user,
            identity.groups,
            entitlements=identity.entitlements,
            vo=vo if settings.vos else None,
        )
        system = self.settings.systems[system_name]
        accepted = f"Lab accepted for system {system.display_name or system_name}."
        admission = None
        if vo is not None and vo in settings.vos:
            quota = settings.vos[vo].quota
            admission = Admission(vo, quota.labs, quota.labs_per_user)

        def message(usage: Usage | None) -> str:
            if admission is None or usage is None:
                return accepted
            shown = settings.vos[admission.vo].display_name or admission.vo
            return f"{accepted} {quota_sentence(shown, admission, usage)}"

        return vo, system_name, clean, admission, message

    async def hand_token(self, lab: Lab, token: str) -> None:
        """Keep the person's newest access token for an active lab: stored sealed (when
        it changed) and the replica that follows the lab told to reload it."""
        if not lab.active:
            return
        self._access_tokens[lab.id] = token
        if await self.store.secrets.put_token(lab.id, token) and self.bus is not None:
            if lab.owner != self.me:
                await self.bus.send("token", lab.id)

    async def _token_changed(self, lab_id: str) -> None:
        """The bus: a lab's access token changed; reload it if this replica follows it."""
        if lab_id in self._runs or lab_id in self._stops:
            token = await self.store.secrets.token(lab_id)
            if token:
                self._access_tokens[lab_id] = token

    async def stop(self, lab: Lab) -> Lab:
        """Begin stopping a lab (idempotent); the stop finishes in the background.
        Asked again for a lab whose stop failed, it tries again at once."""
        if not lab.active:
            return lab
        if lab.state not in (LabState.STOPPING, LabState.STOP_FAILED):
            try:
                # the owner is told in the same transaction: a stop recorded is a stop
                # its follower hears of (unless the bus is down: see _stops_missed)
                lab = await self.store.record(
                    lab.id, LabState.STOPPING, "Stopping the lab.", notify=("stop",)
                )
            except InvalidTransition:
                current = await self.store.get_lab(lab.id)
                assert current is not None
                if current.state not in (LabState.STOPPING, LabState.STOP_FAILED):
                    return current  # it ended meanwhile
                lab = current
            told = True
        else:
            told = False  # asked again: its follower tries again at once
        me = self.me
        if me is None or lab.owner == me or await self.store.claim(lab.id, me):
            if lab.owner != me:
                lab = await self.store.get_lab(lab.id) or lab
            self._stop_here(lab)
        elif self.bus is not None and not told:
            await self.bus.send("stop", lab.id)  # its owner stops it
        return lab

    def _stop_here(self, lab: Lab) -> None:
        """Stop a lab this replica follows: the stop task (or, running, try it now)."""
        if lab.id in self._stops:
            self._stop_now.setdefault(lab.id, asyncio.Event()).set()
        else:
            task = asyncio.create_task(self._owned(lab.id, self._stop(lab)), name=f"stop-{lab.id}")
            self._stops[lab.id] = task
            task.add_done_callback(self._forget_stop)

    async def _stop_asked(self, lab_id: str) -> None:
        """The bus: a replica recorded a stop; the owner carries it out."""
        lab = await self.store.get_lab(lab_id)
        if lab is None or not lab.active or lab.owner is None or lab.owner != self.me:
            return
        if lab.state in (LabState.STOPPING, LabState.STOP_FAILED):
            self._stop_here(lab)

    async def _stops_missed(self, _argument: str = "") -> None:
        """The bus was down (notifications sent meanwhile are lost): stop the labs this
        replica follows that were asked to stop."""
        me = self.me
        if me is None:
            return
        for lab in await self.store.stopping_of(me):
            if lab.id not in self._stops:
                self._stop_here(lab)

    def _forget_stop(self, task: asyncio.Task[None]) -> None:
        for lab_id, t in list(self._stops.items()):
            if t is task:
                del self._stops[lab_id]

    async def recover_all(self) -> None:
        """Re-attach to every active lab (a manager without replicas, after a restart;
        with replicas the first scan claims the labs and :meth:`adopt` takes each)."""
        for lab in await self.store.list_labs(active_only=True):
            await self.adopt(lab)
        log.info("re-attached to %d active labs", len(self._runs) + len(self._stops))

    async def adopt(self, lab: Lab) -> None:
        """Follow a lab this replica has just claimed: stop it if a stop was asked, else
        re-attach to it; launch it if it was accepted but never launched."""
        if lab.id in self._runs or lab.id in self._stops:
            return  # followed already
        if lab.system not in self.settings.systems:
            self._follow(
                lab.id,
                self._finish(
                    lab,
                    LabState.FAILED,
                    f"System {lab.system!r} is no longer offered by this site; the lab was "
                    "given up.",
                    reason="removed",
                ),
                "drop",
            )
            return
        if lab.state in (LabState.STOPPING, LabState.STOP_FAILED):
            self._stop_here(lab)
        else:
            self._follow(lab.id, self._recover_then_watch(lab), "recover")

    async def release_all(self) -> None:
        """Stop following every lab at once, writing nothing (this replica fenced itself:
        its labs' owner rows lapse and other replicas take them)."""
        await self._cancel_all()
        self._stop_now.clear()
        self._access_tokens.clear()

    async def _cancel_all(self) -> None:
        tasks = [*self._runs.values(), *self._stops.values(), *self._hand_backs]
        self._runs.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._stops.clear()

    async def close(self) -> None:
        """Stop following labs (they keep running) and release the drivers."""
        await self._cancel_all()
        for driver in self.drivers.values():
            await driver.close()

    # -- background work -----------------------------------------------------

    async def _start_then_watch(
        self, lab: Lab, env: dict[str, str], *, resumed: bool = False
    ) -> None:
        ctx = self.context(lab, env)
        ctx.resumed = resumed
        driver = self.driver_for(lab)
        try:
            url = await driver.start(ctx)
            await self._record(
                lab.id, LabState.RUNNING, "JupyterLab is ready.", url=url, allowed_from=STARTING_UP
            )
            log.info("%s: running at %s", ctx.log_name, url)
        except LabFailed as exc:
            log.warning("%s: failed to start: %s", ctx.log_name, exc.message)
            await self._finish(lab, LabState.FAILED, exc.message, exc.detail, reason=exc.reason)
            return
        except InvalidTransition:
            return  # a stop came first; it owns the lab now
        except Exception:
            log.exception("%s: start broke", ctx.log_name)
            with contextlib.suppress(Exception):
                await driver.stop(ctx)
            await self._finish(lab, LabState.FAILED, INTERNAL_ERROR, reason="internal")
            return
        try:  # it runs: nobody will launch it again, so its hub token need not be kept
            await self.store.secrets.drop_env(lab.id)
        except Exception as exc:  # kept sealed until the lab ends; the lab runs on
            log.warning("%s: could not forget its start's environment: %s", ctx.log_name, exc)
        await self._watch(ctx, driver)

    async def _recover_then_watch(self, lab: Lab) -> None:
        token = await self.store.secrets.token(lab.id)
        if token and lab.id not in self._access_tokens:
            self._access_tokens[lab.id] = token
        ctx = self.context(lab)
        driver = self.driver_for(lab)
        try:
            url = await driver.recover(ctx)
        except LabEnded as exc:
            log.info("%s: ended while the backend was down", ctx.log_name)
            with contextlib.suppress(LabFailed):
                await driver.stop(ctx)  # clears what the lab left behind
            await self._finish(lab, LabState.STOPPED, exc.message, exc.detail)
            return
        except LabFailed as exc:
            await self._finish(lab, LabState.FAILED, exc.message, exc.detail, reason=exc.reason)
            return
        except Exception:
            log.exception("%s: recovery broke", ctx.log_name)
            await self._finish(lab, LabState.FAILED, INTERNAL_ERROR, reason="internal")
            return
        if url is None:
            env = await self.store.secrets.env(lab.id)
            if env is not None:  # sealed at its admission: launch it (its job tag or pod
                # name finds what an earlier replica submitted, so nothing runs twice)
                log.info("%s: not launched yet; launching it", ctx.log_name)
                await self._start_then_watch(lab, env, resumed=True)
                return
            await self._finish(
                lab,
                LabState.FAILED,
                "The backend restarted before the lab was launched; please start it again.",
                reason="restart",
            )
            return
        log.info("%s: re-attached (%s)", ctx.log_name, url)
        if lab.state != LabState.RUNNING:
            try:
                await self._record(
                    lab.id,
                    LabState.RUNNING,
                    "JupyterLab is ready.",
                    url=url,
                    allowed_from=STARTING_UP,
                )
            except InvalidTransition:
                return
        await self._watch(ctx, driver)

    async def _watch(self, ctx: LabContext[Any], driver: Driver[Any]) -> None:
        try:
            status = await driver.wait_ended(ctx)
        except LabFailed as exc:
            await self._given_up(ctx, driver, exc.message, exc.detail)
            return
        except Exception:
            log.exception("%s: following the lab broke", ctx.log_name)
            await self._given_up(ctx, driver, INTERNAL_ERROR)
            return
        try:
            output = await driver.stop(ctx)  # clears what the lab left behind
        except LabFailed as exc:
            output = exc.message
        except Exception:
            log.exception("%s: clearing up after the lab broke", ctx.log_name)
            output = ""
        self._access_tokens.pop(ctx.lab_id, None)
        await self._drop_secrets(ctx.lab_id)
        code = f" (exit code {status.exit_code})" if status.exit_code is not None else ""
        why = f" {status.message.rstrip('.')}." if status.message else ""
        log.info("%s: ended by itself%s", ctx.log_name, code)
        with contextlib.suppress(InvalidTransition):
            await self._record(
                ctx.lab_id,
                LabState.STOPPED,
                f"The lab ended by itself{code}.{why}",
                detail=output,
                allowed_from=(LabState.RUNNING,),
            )

    async def _given_up(
        self, ctx: LabContext[Any], driver: Driver[Any], message: str, detail: str = ""
    ) -> None:
        """A running lab Lablink can no longer follow: end it (a failed stop keeps it
        active), else fail it with ``message``."""
        try:
            await driver.stop(ctx)
        except Exception as exc:  # any failure: the stop is retried
            why = exc.message if isinstance(exc, LabFailed) else STOP_INTERNAL_ERROR
            lab = await self.store.get_lab(ctx.lab_id)
            if lab is not None and lab.active:
                with contextlib.suppress(InvalidTransition):
                    lab = await self._record(
                        lab.id, LabState.STOPPING, f"{message.rstrip('.')}; stopping the lab."
                    )
                self._runs.pop(lab.id, None)  # this task: the stop must not cancel it
                await self.stop(lab)
                log.warning("%s: could not end the lab: %s", ctx.log_name, why)
                return
        lab = await self.store.get_lab(ctx.lab_id)
        if lab is not None:
            await self._finish(lab, LabState.FAILED, message, detail, reason="lost")

    async def _stop(self, lab: Lab) -> None:
        run = self._runs.pop(lab.id, None)
        if run is not None and run is not asyncio.current_task():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
        delay = self.stop_retry_first
        while True:
            current = await self.store.get_lab(lab.id) or lab
            if not current.active:
                return
            ctx = self.context(current)
            try:
                output = await self.driver_for(lab).stop(ctx)
            except LabFailed as exc:
                why, detail = exc.message, exc.detail
            except Exception:
                log.exception("%s: stop broke", ctx.log_name)
                why, detail = STOP_INTERNAL_ERROR, ""
            else:
                log.info("%s: stopped", ctx.log_name)
                await self._finish(current, LabState.STOPPED, "The lab was stopped.", output)
                return
            log.warning("%s: stop failed, trying again in %.0f s: %s", ctx.log_name, delay, why)
            message = (
                f"The lab could not be stopped yet: {why.rstrip('.')}. Lablink keeps trying; "
                "until the job has ended, the lab counts against your quota."
            )
            if current.state != LabState.STOP_FAILED or current.message != clean_text(message):
                with contextlib.suppress(InvalidTransition):
                    await self._record(lab.id, LabState.STOP_FAILED, message, detail=detail)
            now = self._stop_now.setdefault(lab.id, asyncio.Event())
            now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(now.wait(), delay * (0.75 + random.random() / 2))  # noqa: S311
            delay = min(delay * 2, self.stop_retry_most)

    async def _finish(
        self, lab: Lab, state: LabState, message: str, detail: str = "", *, reason: str = ""
    ) -> None:
        with contextlib.suppress(InvalidTransition):
            await self._record(lab.id, state, message, detail=detail, reason=reason)
        self._runs.pop(lab.id, None)
        self._stop_now.pop(lab.id, None)
        self._access_tokens.pop(lab.id, None)
        await self._drop_secrets(lab.id)

    async def _drop_secrets(self, lab_id: str) -> None:
        """Forget what was sealed of an ended lab (a failure: one log line; the row is
        removed with the lab)."""
        try:
            await self.store.secrets.drop(lab_id)
        except Exception as exc:
            log.warning("lab %s: could not forget its sealed secrets: %s", lab_id, exc)
