"""`lablink check --site FILE [--no-secrets]`: the site as the services read it, each
problem one sentence naming its key, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import main
from tests.helpers import site


@pytest.fixture
def secrets_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(site.HUB_TOKEN_ENV, "h" * 32)
    monkeypatch.setenv(site.ADMIN_TOKEN_ENV, "a" * 32)
    monkeypatch.delenv("LABLINK_DATABASE_URL", raising=False)


def check(path: Path, *extra: str) -> int:
    return main(["check", "--site", str(path), *extra])


def test_a_valid_site(
    tmp_path: Path, secrets_set: None, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = site.doc(
        tmp_path / "state", systems={"local": site.local_system(), "other": site.local_system()}
    )
    path = site.write(doc, tmp_path / "site.yaml")
    assert check(path) == 0
    out = capsys.readouterr()
    assert out.out == (
        f"site {path} is valid: 2 systems (local, other); secrets and files present\n"
    )
    assert out.err == ""
    assert not (tmp_path / "state").exists()  # nothing started, nothing made


def test_a_typo_names_key_and_line(
    tmp_path: Path, secrets_set: None, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = site.doc(tmp_path / "state", systems={"local": site.local_system(comand="x")})
    path = site.write(doc, tmp_path / "site.yaml")
    assert check(path) == 2
    err = capsys.readouterr().err
    assert "systems.local.comand: not a known setting." in err
    assert err.startswith(f"lablink check: site file {path}, line ")
    assert "Traceback" not in err


def test_missing_variables_each_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(site.HUB_TOKEN_ENV, raising=False)
    monkeypatch.delenv(site.ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.delenv("LABLINK_DATABASE_URL", raising=False)
    path = site.write(site.doc(tmp_path / "state"), tmp_path / "site.yaml")
    assert check(path) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"lablink check: tokens.hub: the environment variable {site.HUB_TOKEN_ENV} must hold "
        "a secret of at least 16 characters.",
        f"lablink check: tokens.admin: the environment variable {site.ADMIN_TOKEN_ENV} must "
        "hold a secret of at least 16 characters.",
    ]


def test_no_secrets_checks_the_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(site.HUB_TOKEN_ENV, raising=False)
    path = site.write(site.doc(tmp_path / "state"), tmp_path / "site.yaml")
    assert check(path, "--no-secrets") == 0
    assert capsys.readouterr().out.endswith(
        "is valid: 1 system (local); secrets and files not checked\n"
    )


def test_missing_key_file(
    tmp_path: Path,
    secrets_set: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LABLINK_TUNNEL_TOKEN", "t" * 32)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    ssh = {
        "login_nodes": [{"host": "login1.example.org"}],
        "user": "lablink",
        "key_file": str(tmp_path / "missing_key"),
        "known_hosts": str(known_hosts),
        "destinations": [{"hosts": "*"}],
    }
    doc = site.doc(tmp_path / "state", systems={"hpc": site.tunnel_system(ssh)})
    path = site.write(doc, tmp_path / "site.yaml")
    assert check(path) == 2
    err = capsys.readouterr().err
    assert err == (
        f"lablink check: systems.hpc.ssh.key_file: the SSH key {tmp_path / 'missing_key'} "
        "cannot be read: No such file or directory.\n"
    )


def test_a_missing_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(tmp_path / "nope.yaml") == 2
    assert capsys.readouterr().err == (
        f"lablink check: site file {tmp_path / 'nope.yaml'}: cannot be read: No such file "
        "or directory.\n"
    )


def test_one_service_checks_what_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tunnel's pod has its own token and the SSH files, not the backend's tokens."""
    monkeypatch.delenv(site.HUB_TOKEN_ENV, raising=False)
    monkeypatch.delenv("LABLINK_TUNNEL_TOKEN", raising=False)
    key, known_hosts = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text("")
    known_hosts.write_text("")
    ssh = {
        "login_nodes": [{"host": "login1.example.org"}],
        "user": "lablink",
        "key_file": str(key),
        "known_hosts": str(known_hosts),
        "destinations": [{"hosts": "*"}],
    }
    doc = site.doc(tmp_path / "state", systems={"hpc": site.tunnel_system(ssh)})
    path = site.write(doc, tmp_path / "site.yaml")
    assert check(path, "--service", "tunnel") == 2
    assert capsys.readouterr().err == (
        "lablink check: tunnel_service.token_env: the environment variable "
        "LABLINK_TUNNEL_TOKEN must hold the tunnel service's token (16 characters or more).\n"
    )
    monkeypatch.setenv("LABLINK_TUNNEL_TOKEN", "t" * 32)
    assert check(path, "--service", "tunnel") == 0
    assert capsys.readouterr().out.endswith("secrets and files of the tunnel present\n")
    assert check(path, "--service", "backend") == 2  # the backend's hub token is missing
    assert "tokens.hub:" in capsys.readouterr().err
