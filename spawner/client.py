"""The hub's client for the backend API: one shared HTTP connection pool."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("lablink.spawner")

FINAL = ("stopped", "failed")
# a start the backend may not have heard (a replica gone behind the load balancer): sent
# again with its Idempotency-Key, up to START_TRIES times within START_RETRY_WITHIN s
RETRY_STATUS = frozenset({502, 503, 504})  # 503 also stands for "cannot be reached"
START_TRIES = 3
START_RETRY_FIRST = 0.5  # seconds before the second try, doubled for each next
START_RETRY_WITHIN = 10.0


class BackendError(Exception):
    """The backend refused a request (4xx) or could not be reached / failed (5xx)."""

    def __init__(self, status: int, detail: str, field: str = ""):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field  # the refused option's key (a 422 of a start), or ""


def token_header(access_token: str | None) -> dict[str, str]:
    """The person's OIDC access token for the backend's UNICORE calls, if there is one."""
    return {"X-Lablink-Access-Token": access_token} if access_token else {}


class BackendClient:
    def __init__(self, url: str, token: str, timeout: float = 10.0, ca_bundle: str = ""):
        self.url = url.rstrip("/") + "/api/v1"
        self._token = token
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            trust_env=False,
            verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    def _headers(self, user: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}"}
        if user is not None:
            headers["X-Lablink-User"] = user
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        user: str | None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        try:
            resp = await self._http.request(
                method,
                self.url + path,
                headers={**self._headers(user), **(headers or {})},
                **kw,
            )
        except httpx.TransportError as exc:
            raise BackendError(503, f"The Lablink backend cannot be reached ({exc!r}).") from None
        if resp.status_code >= 400:
            field = ""
            try:
                body = resp.json()
                detail = str(body.get("detail", resp.reason_phrase))
                field = str(body.get("field") or "")
            except (ValueError, AttributeError):
                detail = resp.reason_phrase
            raise BackendError(resp.status_code, detail, field)
        return resp

    async def catalog(self, user: str, groups: list[str] | None = None) -> dict[str, Any]:
        params = {"group": groups} if groups else None
        resp = await self._request("GET", "/catalog", user, params=params)
        return resp.json()  # type: ignore[no-any-return]

    async def put_user(self, user: str, identity: dict[str, list[str]]) -> dict[str, Any]:
        """Tell the backend the person's groups and entitlements; answers with their VOs."""
        resp = await self._request("PUT", f"/users/{user}", user, json=identity)
        return resp.json()  # type: ignore[no-any-return]

    async def get_user(self, user: str) -> dict[str, Any]:
        """The person's VOs with quota used/limit, and the active one."""
        resp = await self._request("GET", f"/users/{user}", user)
        return resp.json()  # type: ignore[no-any-return]

    async def labs(self, user: str) -> list[dict[str, Any]]:
        """The person's labs (their own only: the request acts for them), oldest first."""
        resp = await self._request("GET", "/labs", user, params={"user": user})
        return resp.json()  # type: ignore[no-any-return]

    async def site(self) -> dict[str, Any]:
        """The site's name, logo, login hint and support link (no user needed)."""
        resp = await self._request("GET", "/site", None)
        return resp.json()  # type: ignore[no-any-return]

    async def put_user_vo(self, user: str, vo: str) -> dict[str, Any]:
        resp = await self._request("PUT", f"/users/{user}/vo", user, json={"vo": vo})
        return resp.json()  # type: ignore[no-any-return]

    async def create(
        self, body: dict[str, Any], user: str, idempotency_key: str | None = None, label: str = ""
    ) -> dict[str, Any]:
        """Ask the backend to start a lab. With ``idempotency_key`` (fresh per start), an
        unreachable backend or a 502, 503 or 504 (a replica that died behind the load
        balancer) is asked again with the same key, up to ``START_TRIES`` times within
        ``START_RETRY_WITHIN`` seconds: the backend answers the lab a lost first answer
        stored instead of storing a second. ``label``: the lab's name for the log."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        began = time.monotonic()
        delay = START_RETRY_FIRST
        for attempt in range(1, START_TRIES + 1):
            try:
                resp = await self._request("POST", "/labs", user, headers=headers, json=body)
                return resp.json()  # type: ignore[no-any-return]
            except BackendError as exc:
                late = time.monotonic() - began + delay > START_RETRY_WITHIN
                if (
                    headers is None
                    or exc.status not in RETRY_STATUS
                    or attempt == START_TRIES
                    or late
                ):
                    raise
                log.warning(
                    "%s: the start was not answered (%d: %s); sending it again in %.1f s "
                    "(try %d of %d)",
                    label or user,
                    exc.status,
                    exc.detail,
                    delay,
                    attempt + 1,
                    START_TRIES,
                )
            await asyncio.sleep(delay * (0.75 + random.random() / 2))  # noqa: S311
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(
        self, lab_id: str, user: str, access_token: str | None = None
    ) -> dict[str, Any] | None:
        headers = token_header(access_token)
        try:
            resp = await self._request("GET", f"/labs/{lab_id}", user, headers=headers)
            return resp.json()  # type: ignore[no-any-return]
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(
        self, lab_id: str, user: str, access_token: str | None = None
    ) -> dict[str, Any] | None:
        headers = token_header(access_token)
        try:
            resp = await self._request("DELETE", f"/labs/{lab_id}", user, headers=headers)
            return resp.json()  # type: ignore[no-any-return]
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    async def notice(self, lab_id: str, user: str, message: str) -> dict[str, Any] | None:
        """Put a sentence for the person on an active lab (it shows among its events);
        None if the lab is gone or has ended."""
        try:
            resp = await self._request(
                "POST", f"/labs/{lab_id}/notice", user, json={"message": message}
            )
            return resp.json()  # type: ignore[no-any-return]
        except BackendError as exc:
            if exc.status in (404, 409):
                return None
            raise

    # -- the admin page: each acts for ``user``, a hub admin (X-Lablink-Admin)

    ADMIN = {"X-Lablink-Admin": "true"}

    async def admin_overview(self, user: str) -> dict[str, Any]:
        """Every active lab with its handle, VO and workshop usage, the last failures."""
        resp = await self._request("GET", "/admin/overview", user, headers=self.ADMIN)
        return resp.json()  # type: ignore[no-any-return]

    async def admin_lab(self, lab_id: str, user: str) -> dict[str, Any] | None:
        """Anybody's lab, as an admin sees it (None: no such lab)."""
        try:
            resp = await self._request("GET", f"/labs/{lab_id}", user, headers=self.ADMIN)
            return resp.json()  # type: ignore[no-any-return]
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    async def admin_stop(self, lab_id: str, user: str) -> dict[str, Any] | None:
        """Stop anybody's lab at the backend (None: no such lab)."""
        try:
            resp = await self._request("DELETE", f"/labs/{lab_id}", user, headers=self.ADMIN)
            return resp.json()  # type: ignore[no-any-return]
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    # -- workshops (docs/reference.md "Workshops"): each acts for ``user``, as a hub
    # admin when ``admin`` (the backend trusts X-Lablink-Admin from the hub's token)

    async def _workshop_call(
        self, method: str, path: str, user: str, admin: bool, **kw: Any
    ) -> dict[str, Any]:
        headers = {"X-Lablink-Admin": "true"} if admin else {}
        resp = await self._request(method, "/workshops" + path, user, headers=headers, **kw)
        if resp.status_code == 204 or not resp.content:
            return {}
        return resp.json()  # type: ignore[no-any-return]

    async def workshops(
        self, user: str, admin: bool = False, joined: bool = False
    ) -> list[dict[str, Any]]:
        """The workshops the person organizes (an admin: all), or those they joined."""
        params = {"joined": "true"} if joined else None
        data = await self._workshop_call("GET", "", user, admin, params=params)
        return list(data.get("workshops") or [])

    async def workshop_limits(self, user: str, admin: bool = False) -> dict[str, Any]:
        """Whether the person may create workshops, and what the create form offers."""
        return await self._workshop_call("GET", "/limits", user, admin)

    async def create_workshop(
        self, user: str, body: dict[str, Any], admin: bool = False
    ) -> dict[str, Any]:
        return await self._workshop_call("POST", "", user, admin, json=body)

    async def workshop(
        self, workshop_id: str, user: str, admin: bool = False, code: str = ""
    ) -> dict[str, Any]:
        """The organizer's, the participant's or (with the right ``code``) the invited view."""
        params = {"code": code} if code else None
        return await self._workshop_call("GET", f"/{workshop_id}", user, admin, params=params)

    async def change_workshop(
        self, workshop_id: str, user: str, body: dict[str, Any], admin: bool = False
    ) -> dict[str, Any]:
        return await self._workshop_call("PATCH", f"/{workshop_id}", user, admin, json=body)

    async def renew_workshop_code(
        self, workshop_id: str, user: str, admin: bool = False
    ) -> dict[str, Any]:
        return await self._workshop_call("POST", f"/{workshop_id}/code", user, admin)

    async def join_workshop(
        self, workshop_id: str, user: str, code: str, admin: bool = False
    ) -> dict[str, Any]:
        body = {"code": code}
        return await self._workshop_call("POST", f"/{workshop_id}/join", user, admin, json=body)

    async def workshop_participants(
        self, workshop_id: str, user: str, admin: bool = False
    ) -> dict[str, Any]:
        return await self._workshop_call("GET", f"/{workshop_id}/participants", user, admin)

    async def remove_participant(
        self, workshop_id: str, name: str, user: str, admin: bool = False
    ) -> dict[str, Any]:
        path = f"/{workshop_id}/participants/{quote(name, safe='')}"
        return await self._workshop_call("DELETE", path, user, admin)

    async def stop_participant(
        self, workshop_id: str, name: str, user: str, admin: bool = False
    ) -> dict[str, Any]:
        path = f"/{workshop_id}/participants/{quote(name, safe='')}/stop"
        return await self._workshop_call("POST", path, user, admin)

    async def stop_workshop(
        self, workshop_id: str, user: str, admin: bool = False
    ) -> dict[str, Any]:
        return await self._workshop_call("POST", f"/{workshop_id}/stop", user, admin)

    async def follow(self, lab_id: str, user: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Yield the lab's events as the backend stores them, until a final state.

        Reconnects (with ``after``) when the stream breaks, for example while
        the backend restarts; the caller bounds the total time.
        """
        delay = 0.1
        url = f"{self.url}/labs/{lab_id}/events/stream"
        timeout = httpx.Timeout(self.timeout, read=60.0)
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    url,
                    params={"after": after},
                    headers=self._headers(user),
                    timeout=timeout,
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        if resp.status_code < 500:
                            detail = resp.json().get("detail", "") if resp.content else ""
                            raise BackendError(resp.status_code, detail)
                        raise httpx.RemoteProtocolError(f"status {resp.status_code}")
                    delay = 0.1
                    data: list[str] = []
                    async for line in resp.aiter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line == "" and data:
                            event = json.loads("\n".join(data))
                            data = []
                            after = max(after, int(event["seq"]))
                            yield event
                            if event["state"] in FINAL:
                                return
                # the stream ended without a final event: the backend restarted, or
                # the final event came before ``after``; ask which
                lab = await self.get(lab_id, user)
                if lab is None or lab["state"] in FINAL:
                    return
            except (httpx.TransportError, httpx.RemoteProtocolError, BackendError) as exc:
                if isinstance(exc, BackendError) and exc.status < 500:
                    raise
                log.debug("lab %s: event stream broke (%r); reconnecting", lab_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def aclose(self) -> None:
        await self._http.aclose()
