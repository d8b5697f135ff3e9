"""A person at the hub, over HTTP: log in with the form, start, open, stop labs.

Used by the end-to-end tests and by the spawn benchmark. It goes through the
public proxy port only, with cookies and the XSRF token, as a browser does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx


class HubUser:
    def __init__(self, base_url: str, name: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.password = password
        self.http = httpx.AsyncClient(
            base_url=self.base_url, timeout=30, follow_redirects=False, trust_env=False
        )

    async def __aenter__(self) -> HubUser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    @property
    def xsrf(self) -> str:
        for cookie in self.http.cookies.jar:
            if cookie.name == "_xsrf":
                return str(cookie.value)
        return ""

    async def login(self) -> httpx.Response:
        page = await self.http.get("/hub/login")
        page.raise_for_status()
        match = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        form = {"username": self.name, "password": self.password}
        if match:
            form["_xsrf"] = match.group(1)
        resp = await self.http.post("/hub/login", data=form)
        if resp.status_code != 302:
            raise AssertionError(f"login of {self.name} failed: {resp.status_code}")
        return resp

    def server_path(self, server_name: str = "") -> str:
        return f"/user/{self.name}/{server_name + '/' if server_name else ''}"

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-XSRFToken": self.xsrf, **kw.pop("headers", {})}
        return await self.http.request(method, f"/hub/api{path}", headers=headers, **kw)

    async def start(
        self, server_name: str = "", options: dict[str, Any] | None = None
    ) -> httpx.Response:
        path = (
            f"/users/{self.name}/servers/{server_name}"
            if server_name
            else f"/users/{self.name}/server"
        )
        if options is None:
            return await self.api("POST", path)
        return await self.api("POST", path, json=options)

    async def stop(self, server_name: str = "") -> httpx.Response:
        path = (
            f"/users/{self.name}/servers/{server_name}"
            if server_name
            else f"/users/{self.name}/server"
        )
        return await self.api("DELETE", path)

    async def model(self) -> dict[str, Any]:
        resp = await self.api("GET", f"/users/{self.name}")
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    async def progress(self, server_name: str = "", timeout: float = 120) -> list[dict[str, Any]]:
        """Every event of the hub's progress stream, until ready or failed."""
        path = f"/hub/api/users/{self.name}/servers/{server_name}/progress"
        if not server_name:
            path = f"/hub/api/users/{self.name}/server/progress"
        events: list[dict[str, Any]] = []
        async with self.http.stream(
            "GET", path, headers={"X-XSRFToken": self.xsrf}, timeout=timeout
        ) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("ready") or event.get("failed"):
                        break
        return events

    async def open_lab(self, server_name: str = "") -> httpx.Response:
        """GET /user/<name>/[server/]lab through the proxy, following the OAuth dance."""
        return await self.http.get(f"{self.server_path(server_name)}lab", follow_redirects=True)

    async def wait_lab(
        self, server_name: str = "", timeout: float = 120, poll: float = 0.05
    ) -> float:
        """Poll until the lab itself answers /lab with 200; return the seconds it took.

        While a spawn is pending the hub redirects to its spawn-pending page, which
        answers 200 too: only a 200 at the lab's own path counts.
        """
        lab_path = f"{self.server_path(server_name)}lab"
        t0 = time.monotonic()
        while True:
            resp = await self.open_lab(server_name)
            if resp.status_code == 200 and resp.url.path == lab_path:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(
                    f"{lab_path} did not answer 200 in {timeout}s: "
                    f"{resp.status_code} at {resp.url.path}"
                )
            await asyncio.sleep(poll)

    async def wait_stopped(self, server_name: str = "", timeout: float = 60) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            servers = (await self.model()).get("servers", {})
            if server_name not in servers:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"server {server_name!r} of {self.name} did not stop in {timeout}s")
