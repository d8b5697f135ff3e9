"""The hub forward's CA and certificate (backend/certs.py, `lablink hub-forward-tls`)."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from backend.certs import hub_forward_tls, read_ca


def names(cert_file: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in sans}


def test_the_certificate_is_for_the_names_and_verifies_against_the_ca(tmp_path: Path) -> None:
    files = hub_forward_tls(tmp_path / "tls", ["login1-int", "10.0.0.7"])
    assert names(files.cert_file) == {"login1-int", "10.0.0.7"}
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.cert_file, files.key_file)  # a pair that fits
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_file), str(files.cert_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for key in (files.key_file, tmp_path / "tls" / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_what_fits_is_kept_and_new_names_get_a_new_certificate_from_the_same_ca(
    tmp_path: Path,
) -> None:
    first = hub_forward_tls(tmp_path, ["login1-int"])
    cert, ca = first.cert_file.read_bytes(), first.ca_file.read_bytes()
    again = hub_forward_tls(tmp_path, ["login1-int"])
    assert again.cert_file.read_bytes() == cert and again.ca_file.read_bytes() == ca
    more = hub_forward_tls(tmp_path, ["login1-int", "login2-int"])
    assert more.cert_file.read_bytes() != cert  # renewed for the new name ...
    assert more.ca_file.read_bytes() == ca  # ... by the CA labs already trust
    assert names(more.cert_file) == {"login1-int", "login2-int"}


def test_a_ca_file_is_read_as_checked_pem(tmp_path: Path) -> None:
    files = hub_forward_tls(tmp_path, ["h"])
    assert read_ca(files.ca_file) == files.ca_file.read_text()
    bad = tmp_path / "bad.pem"
    for text, words in [
        ("-----BEGIN CERTIFICATE-----\n$(id)\n-----END CERTIFICATE-----\n", "no PEM"),
        ("x" * 70_000, "larger than"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            read_ca(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_ca(tmp_path / "missing.pem")


def test_the_command_prints_the_settings_block_and_refuses_a_bad_host(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "backend.cli", "hub-forward-tls"]
    ok = subprocess.run(
        [*cmd, "--host", "login1-int", str(tmp_path / "tls")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"cert_file: {tmp_path / 'tls' / 'cert.pem'}" in ok.stdout
    bad = subprocess.run(
        [*cmd, "--host", "a;rm -rf /", str(tmp_path / "other")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "is not a host name or an IP address" in bad.stderr
    assert not (tmp_path / "other").exists()
