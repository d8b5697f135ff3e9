"""Host names and addresses as allow-lists compare them (pure).

A lab reports where it listens (``lab.json``) and the tunnel service forwards
to what the backend asks for, so both compare an address someone else chose
against the site's patterns. An address has many spellings: ``127.1``,
``2130706433``, ``0x7f000001`` and ``0177.0.0.1`` are all 127.0.0.1 to the C
library, ``0`` is 0.0.0.0, ``::ffff:127.0.0.1`` is 127.0.0.1 too. So every
host is first made canonical (:func:`canonical`), and patterns match whole DNS
labels: ``jwc*`` matches ``jwc01`` but not ``jwc.attacker.example``.

Patterns (``lab_hosts``, the tunnel's ``destinations``):

- ``*`` matches every host;
- an IP address or network (``10.1.0.0/16``, ``127.0.0.1``, ``fd00::/8``)
  matches the addresses in it, however they are spelled;
- otherwise a DNS name whose labels are shell-style patterns (``*``, ``?``,
  ``[...]``), each matching one label, never a dot: ``jwc*`` one label,
  ``*.cluster.example`` one label under ``cluster.example``; an address is
  compared in its canonical spelling (``10.0.0.*`` matches ``10.0.0.7``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# what inet_aton reads as an IPv4 address: up to four dot-separated numbers,
# each decimal, octal (0...) or hexadecimal (0x...)
_NUMERIC_V4 = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def ip_of(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the C library accepts; None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if _NUMERIC_V4.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical(host: str) -> str | None:
    """``host`` in one spelling: an IP address as Python prints it (IPv4-mapped IPv6
    as IPv4), a DNS name in lower case without a trailing dot; None if it is
    neither (empty labels, characters a host name cannot have)."""
    address = ip_of(host)
    if address is not None:
        return str(address)
    name = host.strip().lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None  # a number inet_aton refused (too large): no host
    return name


def is_local(host: str) -> bool:
    """Loopback, link-local or unspecified: the machine that reads it, not a compute node."""
    name = canonical(host)
    if name is None:
        return False
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    address = ip_of(name)
    return address is not None and (
        address.is_loopback or address.is_link_local or address.is_unspecified
    )


def matches(host: str, pattern: str) -> bool:
    """Whether ``host`` (any spelling) is one of the hosts ``pattern`` names."""
    name = canonical(host)
    if name is None:
        return False
    if pattern.strip() == "*":
        return True
    address = ip_of(name)
    try:
        network = ipaddress.ip_network(pattern.strip().strip("[]"), strict=False)
    except ValueError:
        network = None
    if network is not None:
        return address is not None and address.version == network.version and address in network
    # a name pattern; an address is compared in its canonical spelling ("10.0.0.*")
    wanted = pattern.strip().lower().removesuffix(".").split(".")
    labels = name.split(".")
    return len(wanted) == len(labels) and all(
        fnmatch.fnmatchcase(label, want) for label, want in zip(labels, wanted, strict=True)
    )


def named_by(host: str, patterns: list[str]) -> bool:
    """Whether a pattern other than ``*`` names ``host`` (local addresses need that)."""
    return any(matches(host, p) for p in patterns if p.strip() != "*")
