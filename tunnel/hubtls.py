"""The TLS end of the hub's API on the login nodes.

The login nodes' reverse forwards (``ssh.hub_forward``) do not lead to the
hub's API directly but to a ``HubTls`` listener on 127.0.0.1 of the tunnel
service's machine: it completes the labs' TLS handshake with the site's
certificate (``hub_forward.tls``) and passes the bytes on to the hub's API
(``tunnel_service.hub_api``). Labs check that certificate against the CA their
start script gave them, so a process on the login node that took the port
gets a failed handshake, never a hub token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from backend.sshconfig import HubForwardTls

log = logging.getLogger("lablink.tunnel")

HANDSHAKE_WITHIN = 10.0  # seconds a lab has for its TLS handshake
MAX_CONNECTIONS = 512  # at once; more wait in the listen backlog
CHUNK = 64 << 10


def server_context(tls: HubForwardTls) -> ssl.SSLContext:
    """The server side of the hub forward's TLS; ssl.SSLError or OSError when the
    certificate or key cannot be used."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, ssl.SSLError):
        pass


class HubTls:
    """A TLS listener on loopback that hands each connection on to the hub's API."""

    def __init__(self, tls: HubForwardTls, hub: tuple[str, int]):
        self.context = server_context(tls)
        self.hub = hub
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._serve,
            "127.0.0.1",
            0,
            ssl=self.context,
            ssl_handshake_timeout=HANDSHAKE_WITHIN,
        )
        self.address = self._server.sockets[0].getsockname()[:2]
        return self.address

    async def _serve(self, lab_r: asyncio.StreamReader, lab_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with self._slots:
                try:
                    hub_r, hub_w = await asyncio.open_connection(*self.hub)
                except OSError as exc:
                    log.warning("the hub's API at %s:%s does not answer (%s)", *self.hub, exc)
                    return
                # the lab's end of input is passed on (TCP half-close); when the hub
                # has said all it will, the connection is over (TLS has no half-close)
                upward = asyncio.create_task(_pump(lab_r, hub_w))
                try:
                    await _pump(hub_r, lab_w)
                finally:
                    upward.cancel()
                    hub_w.close()
        finally:
            lab_w.close()
            with contextlib.suppress(Exception):
                await lab_w.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
