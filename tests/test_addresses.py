"""Addresses as allow-lists compare them (backend/addresses.py): every spelling of an
address is that address, and name patterns match whole DNS labels. Before, ``127.1``
passed ``lab_hosts: ['*']`` as a remote host and ``jwc*`` matched
``jwc.attacker.example``."""

from __future__ import annotations

import pytest

from backend import addresses
from backend.sshconfig import SshTunnel
from backend.systems.batch.script import BadLabFile, parse_lab_file
from backend.systems.unicore.config import UnicoreSystem
from tests.helpers import site
from tunnel.app import allowed, resolve

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "0177.0.0.1",
    "127.0.0.01",
    "[::1]",
    "::ffff:127.0.0.1",
    "0:0:0:0:0:ffff:7f00:1",
    "0",
    "0.0.0.0",
    "::",
    "localhost",
    "LOCALHOST.",
    "lab.localhost",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_this_machine_is_local(host: str) -> None:
    assert addresses.is_local(host)


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("JWC01.Example.ORG.", "jwc01.example.org"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_hosts_have_one_spelling(host: str, canonical: str) -> None:
    assert addresses.canonical(host) == canonical


@pytest.mark.parametrize("host", ["", "a..b", "-a.b", "a b", "a/b", "99999999999", "1.2.3.4.5"])
def test_what_is_no_host_has_no_spelling(host: str) -> None:
    assert addresses.canonical(host) is None


@pytest.mark.parametrize(
    ("host", "pattern", "expected"),
    [
        ("jwc01", "jwc*", True),
        ("JWC01", "jwc*", True),
        ("jwc.attacker.example", "jwc*", False),
        ("jwc01.attacker.example", "jwc*", False),
        ("jwc01.fz-juelich.de", "jwc*.fz-juelich.de", True),
        ("jwc01.fz-juelich.de.attacker.example", "jwc*.fz-juelich.de", False),
        ("a.b.cluster.example", "*.cluster.example", False),
        ("node7.cluster.example", "*.cluster.example", True),
        ("10.1.2.3", "10.1.0.0/16", True),
        ("0x0a010203", "10.1.0.0/16", True),
        ("10.2.0.1", "10.1.0.0/16", False),
        ("node7", "10.1.0.0/16", False),
        ("10.0.0.7", "10.0.0.*", True),
        ("167772167", "10.0.0.*", True),  # 10.0.0.7
        ("127.1", "127.0.0.1", True),
        ("::ffff:127.0.0.1", "127.0.0.1", True),
        ("::1", "127.0.0.1", False),
        ("anything.example", "*", True),
    ],
)
def test_patterns_match_addresses_however_spelled_and_names_by_whole_labels(
    host: str, pattern: str, expected: bool
) -> None:
    assert addresses.matches(host, pattern) is expected


def hpc(lab_hosts: list[str]) -> UnicoreSystem:
    system = site.unicore_catalog_system(lab_hosts=lab_hosts)
    parsed = site.settings(site.doc(None, systems={"hpc": system})).systems["hpc"]
    assert isinstance(parsed, UnicoreSystem)
    return parsed


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0", "0177.0.0.1"])
def test_a_lab_cannot_name_this_machine_in_another_spelling(host: str) -> None:
    system = hpc(["*"])
    with pytest.raises(BadLabFile, match="local address"):
        parse_lab_file(f'{{"host": "{host}", "port": 8888}}'.encode(), system)


def test_a_lab_host_must_match_a_pattern_label_by_label() -> None:
    system = hpc(["jwc*"])
    with pytest.raises(BadLabFile, match="lab_hosts"):
        parse_lab_file(b'{"host": "jwc.attacker.example", "port": 8888}', system)
    address = parse_lab_file(b'{"host": "JWC07", "port": 8888}', system)
    assert (address.host, address.port) == ("jwc07", 8888)


def test_this_machine_is_a_lab_host_where_named_in_any_spelling() -> None:
    system = hpc(["127.0.0.1"])
    address = parse_lab_file(b'{"host": "127.1", "port": 8888}', system)
    assert address.host == "127.0.0.1"


def tunnel_rules(*hosts: str) -> SshTunnel:
    return SshTunnel(
        login_nodes=[{"host": "login1.example.org"}],  # type: ignore[list-item]
        user="lablink",
        key_file="/nonexistent/key",
        known_hosts="/nonexistent/known_hosts",
        destinations=[{"hosts": h} for h in hosts],  # type: ignore[misc]
    )


async def test_the_tunnel_service_resolves_once_and_checks_the_address() -> None:
    assert await resolve("0x7f000001") == "127.0.0.1"
    assert await resolve("localhost") in ("127.0.0.1", "::1")
    assert await resolve("no-such-host.invalid") is None
    anywhere = tunnel_rules("*")
    # '*' never reaches the login node itself, however it is spelled or named
    for host in ("127.0.0.1", "localhost"):
        assert not allowed(anywhere, host, "127.0.0.1", 8888)
    assert allowed(anywhere, "10.1.2.3", "10.1.2.3", 8888)
    assert allowed(tunnel_rules("127.0.0.1"), "localhost", "127.0.0.1", 8888)
    nodes = tunnel_rules("jwc*")
    assert allowed(nodes, "jwc01", "10.1.2.3", 8888)
    assert not allowed(nodes, "jwc.attacker.example", "203.0.113.9", 8888)
    assert allowed(tunnel_rules("10.1.0.0/16"), "jwc01", "10.1.2.3", 8888)  # by its address
    assert not allowed(nodes, "jwc01", "10.1.2.3", 80)  # below the ports allowed
