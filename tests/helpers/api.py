"""The backend as a real HTTP server, seen from a test: a started backend and its
clients (the ``start_backend`` and ``backend`` fixtures make them), the body of a
start request, and waits for a lab's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from tests.helpers.metrics import Scrape, scrape


@dataclass
class RunningBackend:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]
    tokens: dict[str, str]

    def client(self, user: str | None = "alice", *, admin_token: bool = False) -> httpx.AsyncClient:
        token = self.tokens["admin" if admin_token else "hub"]
        headers = {"Authorization": f"Bearer {token}"}
        if user is not None:
            headers["X-Lablink-User"] = user
        return httpx.AsyncClient(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=30, trust_env=False
        )

    async def metrics(self) -> Scrape:
        """This backend's /metrics, parsed (the figures of the database read afresh)."""
        self.server.config.app.state.metrics.refresh_every = 0.0  # what the test just did
        return await scrape(f"{self.url}/metrics", self.tokens["metrics"])

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


BackendFactory = Callable[..., Awaitable[RunningBackend]]


async def wait_state(
    client: httpx.AsyncClient, lab_id: str, states: set[str], timeout: float = 30
) -> dict[str, Any]:
    """Poll a lab until it is in one of ``states``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lab = (await client.get(f"/labs/{lab_id}")).json()
        if lab["state"] in states:
            return lab  # type: ignore[no-any-return]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"lab {lab_id} stayed {lab['state']}, wanted {states}")
        await asyncio.sleep(0.05)


def lab_request(user: str = "alice", server_name: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user": {"name": user, "groups": [], "admin": False},
        "server_name": server_name,
        "options": {},
        "env": {
            "JUPYTERHUB_API_TOKEN": "secret-hub-api-token-" + user,
            "JUPYTERHUB_SERVICE_PREFIX": f"/user/{user}/{server_name + '/' if server_name else ''}",
        },
    }
    body.update(extra)
    return body


async def stop_and_wait(client: httpx.AsyncClient, lab_id: str) -> dict[str, Any]:
    resp = await client.delete(f"/labs/{lab_id}")
    assert resp.status_code == 202, resp.text
    return await wait_state(client, lab_id, {"stopped", "failed"})


async def stop_everything(backend: RunningBackend) -> None:
    async with backend.client(None, admin_token=True) as admin:
        for lab in (await admin.get("/labs", params={"active": "true"})).json():
            await stop_and_wait(admin, lab["id"])
