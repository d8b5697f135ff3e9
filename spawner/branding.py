"""The site's face on the hub's pages: name, logo, login hint and support link.

They come from the backend (``GET /api/v1/site``, ``branding`` in the site file)
and are kept here, so that every page, the login page before anyone has logged
in among them, can show them without a request of its own. The hub's
configuration reads them once at start (the backend starts first) and gives
them to the templates as ``lablink_site`` (``JupyterHub.template_vars``); a page
rendered when they are older than ``max_age`` seconds asks the backend again in
the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from typing import Any

import httpx

from .client import BackendClient, BackendError

log = logging.getLogger("lablink.spawner")

DEFAULT = {
    "name": "Lablink",
    "logo": "",
    "login_hint": "",
    "login_hint_url": "",
    "support_url": "",
}


class SiteFace:
    """The branding the templates show, refreshed from the backend now and then."""

    def __init__(self, url: str, token: str, ca_bundle: str = "", max_age: float = 300):
        self.url, self.token, self.ca_bundle, self.max_age = url, token, ca_bundle, max_age
        self.face: dict[str, str] = dict(DEFAULT)
        self.loaded = 0.0  # time.monotonic() of the last answer; 0: none yet
        self._refreshing: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls) -> SiteFace:
        """The backend the spawner talks to (LABLINK_BACKEND_URL, _TOKEN, _CA_BUNDLE)."""
        return cls(
            os.environ.get("LABLINK_BACKEND_URL", "http://127.0.0.1:8010"),
            os.environ.get("LABLINK_BACKEND_TOKEN", ""),
            os.environ.get("LABLINK_BACKEND_CA_BUNDLE", ""),
        )

    def _keep(self, data: Any) -> None:
        if isinstance(data, dict):
            self.face = {k: str(data.get(k) or v) for k, v in DEFAULT.items()}
            self.loaded = time.monotonic()

    def load_now(self, timeout: float = 5.0) -> None:
        """Ask the backend once, blocking (at the hub's start, before its event loop
        serves); a backend that does not answer leaves the defaults and is asked again
        when a page is rendered."""
        verify: Any = ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True
        try:
            resp = httpx.get(
                self.url.rstrip("/") + "/api/v1/site",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=timeout,
                trust_env=False,
                verify=verify,
            )
            resp.raise_for_status()
            self._keep(resp.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("the site's branding is not loaded yet (%r); asking again later", exc)

    async def refresh(self) -> None:
        client = BackendClient(self.url, self.token, timeout=5.0, ca_bundle=self.ca_bundle)
        try:
            self._keep(await client.site())
        except BackendError as exc:
            log.warning("cannot load the site's branding: %s", exc.detail)
            self.loaded = time.monotonic() - self.max_age + 30  # again in 30 s
        finally:
            await client.aclose()

    def __call__(self, user: Any = None) -> dict[str, str]:
        """For ``template_vars``: the branding as it is, with a refresh started when it
        is old (pages are rendered on the hub's event loop)."""
        stale = not self.loaded or time.monotonic() - self.loaded > self.max_age
        if stale and (self._refreshing is None or self._refreshing.done()):
            try:
                self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
            except RuntimeError:  # no loop: rendered outside the hub
                pass
        return self.face
