"""Labs on a cloud system: a pod per lab, through the UserLab Manager.

The backend never talks to Kubernetes itself. It asks the manager for a pod
(the options were checked against the flavors and images already; the manager
checks again), then follows the lab with long polls (``?wait=&seen=``) and
turns each new state into an event with the manager's sentence:

- ``scheduling`` is *queued*;
- ``pulling`` and ``starting`` are *starting*;
- ``ready`` is *running* once the lab answers at its URL;
- ``failed``, ``ended`` and ``gone`` end the start with the manager's sentence
  (image pull errors, unschedulable, out of memory), and the pod is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from ...states import LabState
from ..driver import Driver, LabContext, LabEnded, LabFailed, LabStatus, service_prefix
from .client import UserlabClient, UserlabError
from .config import KubernetesSystem

log = logging.getLogger("lablink.backend.kubernetes")

ACTIVE = frozenset({"scheduling", "pulling", "starting", "ready"})
LONG_POLL = 10.0
INTERNAL = (
    "This system needs the UserLab Manager, which the backend is not set up to use; please "
    "tell the site's admins."
)


def _name(ctx: LabContext[KubernetesSystem]) -> str:
    return ctx.system_label


def _lab_state(state: str) -> LabState:
    return LabState.QUEUED if state == "scheduling" else LabState.STARTING


class KubernetesDriver(Driver[KubernetesSystem]):
    status_interval: ClassVar[float] = 5.0
    log: ClassVar[logging.Logger] = log

    def _client(self, ctx: LabContext[KubernetesSystem]) -> UserlabClient:
        if ctx.peers.userlabs is None:
            raise LabFailed(INTERNAL)
        return ctx.peers.userlabs

    def _unavailable(self, ctx: LabContext[KubernetesSystem]) -> str:
        return (
            f"The cloud {_name(ctx)!r} cannot be reached right now; please try again later "
            "or choose another system."
        )

    async def _end_quietly(self, ctx: LabContext[KubernetesSystem]) -> str:
        try:
            return str(await self._client(ctx).delete(ctx.lab_id, retry_for=ctx.system.retry_for))
        except (UserlabError, LabFailed) as exc:
            log.warning("%s: the pod was not deleted: %s", ctx.log_name, exc)
            return ""

    # -- the contract -------------------------------------------------------------

    async def start(self, ctx: LabContext[KubernetesSystem]) -> str:
        client = self._client(ctx)
        prefix = service_prefix(ctx)
        await ctx.save({"prefix": prefix})
        options = ctx.options
        body = {
            "lab_id": ctx.lab_id,
            "system": ctx.system_name,
            "user": ctx.user_name,
            "server_name": ctx.server_name,
            "vo": ctx.vo or "",
            "flavor": options["flavor"],
            "image": options["image"],
            "cpu": options.get("cpu"),
            "memory": options.get("memory"),
            "prefix": prefix,
            "env": {k: v for k, v in ctx.env.items() if k.startswith("JUPYTERHUB_")},
        }
        await ctx.report(
            LabState.SUBMITTED,
            f"Asking {_name(ctx)} for a pod (flavor {options['flavor']}, image "
            f"{options['image']}).",
        )
        try:
            lab = await client.create(body, retry_for=ctx.system.retry_for)
        except UserlabError as exc:
            log.warning("%s: no pod: %s", ctx.log_name, exc.message)
            if exc.refused:
                raise LabFailed(exc.message) from None
            raise LabFailed(self._unavailable(ctx)) from None
        self.step(ctx, "pod %s in namespace %s", lab.get("pod"), lab.get("namespace"))
        await ctx.save({**ctx.handle, "namespace": lab.get("namespace"), "pod": lab.get("pod")})
        return await self._follow(ctx, lab, time.monotonic() + ctx.system.start_timeout)

    async def _follow(
        self, ctx: LabContext[KubernetesSystem], lab: dict[str, Any] | None, deadline: float
    ) -> str:
        """Report every new state of a starting lab; its URL once it answers."""
        client = self._client(ctx)
        prefix = service_prefix(ctx)
        seen = ""
        while True:
            if lab is None:
                raise LabFailed("The lab's pod is gone.")
            state = str(lab["state"])
            if state != seen:
                seen = state
                self.step(ctx, "pod state %s: %s", state, lab.get("message"))
                if state in ACTIVE:
                    await ctx.progress(_lab_state(state), str(lab["message"]))
            if state not in ACTIVE:
                await self._end_quietly(ctx)
                raise LabFailed(str(lab["message"]), reason="ended")
            if state == "ready" and lab.get("url"):
                url = str(lab["url"]).rstrip("/")
                if await self.answers(f"{url}{prefix}api"):
                    self.step(ctx, "the lab answers at %s", url)
                    await ctx.save({**ctx.handle, "url": url})
                    return url
            if time.monotonic() > deadline:
                await self._end_quietly(ctx)
                limit = ctx.system.start_timeout
                took = f"{limit / 60:g} minutes" if limit >= 120 else f"{limit:g} seconds"
                raise LabFailed(
                    f"The lab did not start within {took} ({lab['message'].rstrip('.')}); its pod "
                    "was deleted. Please try again, perhaps with a smaller flavor.",
                    reason="timeout",
                )
            wait = 0.0 if state == "ready" else LONG_POLL
            try:
                if wait:
                    lab = await client.get(ctx.lab_id, ctx.system.retry_for, wait=wait, seen=state)
                else:
                    await asyncio.sleep(ctx.system.poll_interval)
                    lab = await client.get(ctx.lab_id, ctx.system.retry_for)
            except UserlabError as exc:
                await self._end_quietly(ctx)
                raise LabFailed(exc.message if exc.refused else self._unavailable(ctx)) from None

    async def status(self, ctx: LabContext[KubernetesSystem]) -> LabStatus:
        try:
            lab = await self._client(ctx).get(ctx.lab_id, ctx.system.retry_for)
        except (UserlabError, LabFailed) as exc:
            log.warning("%s: cannot look at the pod: %s", ctx.log_name, exc)
            return LabStatus(alive=True)  # unknown is not ended; the next look decides
        if lab is None:
            return LabStatus(alive=False, message="The lab's pod is gone.")
        if lab["state"] in ACTIVE:
            return LabStatus(alive=True)
        return LabStatus(alive=False, message=str(lab["message"]))

    async def stop(self, ctx: LabContext[KubernetesSystem]) -> str:
        try:
            return str(await self._client(ctx).delete(ctx.lab_id, retry_for=ctx.system.retry_for))
        except UserlabError as exc:
            raise LabFailed(
                f"The lab's pod could not be deleted ({exc.message}); the site's admins can "
                "remove it."
            ) from None

    async def recover(self, ctx: LabContext[KubernetesSystem]) -> str | None:
        if not ctx.handle.get("prefix"):
            return None
        try:
            lab = await self._client(ctx).get(ctx.lab_id, ctx.system.retry_for)
        except UserlabError as exc:
            raise LabEnded(self._unavailable(ctx), detail=exc.message) from None
        if lab is None:
            return None  # the manager never made it: the manager starts it again
        if lab["state"] not in ACTIVE:
            raise LabEnded(str(lab["message"]))
        return await self._follow(ctx, lab, time.monotonic() + ctx.system.start_timeout)
