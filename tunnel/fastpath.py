"""A faster receive path for asyncssh's forwarded TCP data (installed by links.py).

Profiling the service during a 512 MiB transfer (py-spy, perf) showed
most of its CPU in copying, not in AES: asyncssh keeps received bytes in one
``bytes`` buffer and slices it twice per SSH packet (``_inpbuf[n:]``), so a
256 KiB read holding eight 32 KiB packets is copied ~8 times over, and each
packet is copied ~4 more times on its way to the socket (header + rest + MAC,
padding, ``get_string``); it also builds a new ``AESGCM`` object per packet.

``install()`` wraps ``SSHConnection.data_received``: while the connection is
between packets, uses AES-GCM without compression, and is authenticated, it
walks the received bytes by offset, decrypts each packet in place from a
memoryview (one AESGCM object per key) and hands CHANNEL_DATA of an open TCP
forwarding channel to the channel as a memoryview of the plaintext. Anything
else (any other message, another channel kind, a bad MAC, a window or length
violation) goes, with the rest of the bytes, to asyncssh's own path, which
decrypts that packet again and handles or rejects it as before: the wire
protocol, checks and errors are asyncssh's. Written against asyncssh 2.24
(private attributes: ``_inpbuf``, ``_recv_handler``, ``_recv_seq``, the GCM
cipher's ``_key``/``_iv``/``_update_iv``); ``install()`` does nothing when they
are missing.
"""

from __future__ import annotations

import logging
from typing import Any

from asyncssh import connection, encryption
from asyncssh.channel import SSHTCPChannel
from asyncssh.crypto import cipher as ciphers
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("lablink.tunnel")

MSG_CHANNEL_DATA = 94
GCM_TAG = 16
_installed = False
carried = 0  # data packets that took this path (the tests check that it is used)


def _aead(gcm: Any) -> AESGCM:
    """The AESGCM object of a GCMCipher, made once per key (asyncssh makes one
    per packet)."""
    aead = gcm.__dict__.get("_lablink_aead")
    if aead is None:
        aead = gcm._lablink_aead = AESGCM(gcm._key)
    return aead


def _supported() -> bool:
    conn, gcm = connection.SSHConnection, ciphers.GCMCipher
    return all(hasattr(conn, name) for name in ("data_received", "_recv_pkthdr")) and all(
        hasattr(gcm, name) for name in ("_update_iv", "verify_and_decrypt", "encrypt_and_sign")
    )


def install() -> None:
    """Patch asyncssh (idempotent)."""
    global _installed
    if _installed:
        return
    if not _supported():
        log.warning("asyncssh's internals changed; forwarding uses its own receive path")
        return
    _installed = True
    conn_class = connection.SSHConnection
    slow_received = conn_class.data_received
    recv_pkthdr = conn_class._recv_pkthdr
    gcm_encryption = encryption.GCMEncryption

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        enc = self._recv_encryption
        if (
            type(enc) is not gcm_encryption
            or self._decompressor is not None
            or not self._auth_complete
            or getattr(self._recv_handler, "__func__", None) is not recv_pkthdr
        ):
            slow_received(self, data)
            return
        try:
            fast_received(self, enc, data)
        except connection.DisconnectError as exc:  # as asyncssh's own _recv_data does
            self._send_disconnect(exc.code, exc.reason, exc.lang)
            self._force_close(exc)
        except Exception:
            self.internal_error()

    def fast_received(self: Any, enc: Any, data: bytes) -> None:
        self._reset_keepalive_timer()
        buf = self._inpbuf + data if self._inpbuf else data
        view, size, pos, slow = memoryview(buf), len(buf), 0, False
        gcm = enc._cipher
        aead = _aead(gcm)
        channels = self._channels
        count = 0
        while size - pos >= 4:
            pktlen = int.from_bytes(view[pos : pos + 4], "big")
            end = pos + 4 + pktlen + GCM_TAG
            if pktlen > self._max_recv_pktlen:
                slow = True
                break
            if end > size:
                break  # the rest of this packet is still on its way
            try:
                plain = aead.decrypt(gcm._iv, view[pos + 4 : end], view[pos : pos + 4])
            except InvalidTag:
                slow = True
                break
            if len(plain) < 10:
                slow = True
                break
            chan = channels.get(int.from_bytes(plain[2:6], "big"))
            length = int.from_bytes(plain[6:10], "big")
            if (
                plain[1] != MSG_CHANNEL_DATA
                or not isinstance(chan, SSHTCPChannel)
                or chan._recv_state != "open"
                or length > chan._recv_window
                or 10 + length + plain[0] != len(plain)
            ):
                slow = True  # asyncssh handles this packet (decrypting it again)
                break
            gcm._update_iv()
            self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
            pos = end
            count += 1
            if length:  # a view, not a copy: forwarders only write it to a transport
                chan._accept_data(memoryview(plain)[10 : 10 + length])  # type: ignore[arg-type]
            if self._transport is None:  # the session closed the connection
                return
        global carried
        carried += count
        rest = buf[pos:] if pos else buf
        if slow:
            self._inpbuf = b""
            slow_received(self, rest)
        else:
            self._inpbuf = rest

    def verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            plain: bytes | None = _aead(self).decrypt(self._iv, data + mac, header)
        except InvalidTag:
            plain = None
        self._update_iv()
        return plain

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + sealed[:-GCM_TAG], sealed[-GCM_TAG:]

    conn_class.data_received = data_received  # type: ignore[method-assign]
    ciphers.GCMCipher.verify_and_decrypt = verify_and_decrypt  # type: ignore[method-assign]
    ciphers.GCMCipher.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]
