"""The bytes through a system's forwards, counted per chunk (used by links.py).

asyncssh's ``forward_local_port`` gives each connection to a forward's local port
a forwarder protocol (``SSHLocalPortForwarder``) paired with one on the SSH
channel: what the local client sends arrives in the first one's
``data_received`` and goes on towards the lab; what the lab sends comes back
through its ``write``. :func:`forward_local_port` opens the same listener, the
same way, with a subclass that adds each chunk's length to the system's
:class:`Traffic` there: one addition per socket read or SSH packet (up to 256 KiB
under load), nothing per byte, no lock (the event loop's thread alone counts).

Written against asyncssh 2.24 (``asyncssh.listener.create_tcp_local_listener``,
``asyncssh.forward.SSHLocalPortForwarder``, the connection's
``_local_listeners``); where they are missing, forwards are opened by asyncssh's
own ``forward_local_port`` and their bytes are not counted (the log says so once).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh

log = logging.getLogger("lablink.tunnel")

try:
    from asyncssh.forward import SSHLocalPortForwarder
    from asyncssh.listener import create_tcp_local_listener
except ImportError:  # pragma: no cover - another asyncssh release
    SSHLocalPortForwarder = None  # type: ignore[assignment, misc]
    create_tcp_local_listener = None  # type: ignore[assignment]

_warned = False


class Traffic:
    """Bytes through one system's forwards since the service started."""

    __slots__ = ("from_lab", "to_lab")

    def __init__(self) -> None:
        self.to_lab = 0
        self.from_lab = 0


if SSHLocalPortForwarder is not None:

    class _Counted(SSHLocalPortForwarder):
        """The local end of one forwarded connection, counting what passes."""

        def __init__(self, conn: Any, coro: Any, traffic: Traffic):
            super().__init__(conn, coro)
            self._traffic = traffic

        def data_received(self, data: bytes, datatype: int | None = None) -> None:
            self._traffic.to_lab += len(data)
            super().data_received(data, datatype)

        def write(self, data: bytes) -> None:
            self._traffic.from_lab += len(data)
            super().write(data)


def _supported(conn: asyncssh.SSHClientConnection) -> bool:
    return (
        create_tcp_local_listener is not None
        and SSHLocalPortForwarder is not None
        and isinstance(getattr(conn, "_local_listeners", None), dict)
    )


async def forward_local_port(
    conn: asyncssh.SSHClientConnection,
    listen_host: str,
    listen_port: int,
    dest_host: str,
    dest_port: int,
    traffic: Traffic,
) -> asyncssh.SSHListener:
    """``conn.forward_local_port(listen_host, listen_port, dest_host, dest_port)``,
    its bytes added to ``traffic``; OSError when the port cannot be bound."""
    global _warned
    if not _supported(conn):
        if not _warned:
            log.warning("asyncssh's internals changed; the bytes through forwards are not counted")
            _warned = True
        return await conn.forward_local_port(listen_host, listen_port, dest_host, dest_port)

    async def tunnel_connection(session_factory: Any, orig_host: str, orig_port: int) -> Any:
        return await conn.create_connection(
            session_factory, dest_host, dest_port, orig_host, orig_port
        )

    def protocol_factory() -> asyncio.BaseProtocol:
        return _Counted(conn, tunnel_connection, traffic)

    loop = asyncio.get_running_loop()
    listener = await create_tcp_local_listener(
        conn,  # type: ignore[arg-type]
        loop,
        protocol_factory,
        listen_host,
        listen_port,
    )
    # as asyncssh's own: the connection closes it when it closes, and it leaves the
    # connection's list when it is closed first
    conn._local_listeners[listen_host, listen_port] = listener
    return listener
