"""The site file: loading, validation errors that name the key and the line,
token secrets from the environment, and the database URL."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

import backend
from backend import loginnode
from backend.cli import build_parser
from backend.embedded import Embedded, SiteTunnels, site_tunnels
from backend.settings import (
    Settings,
    SettingsError,
    load_settings,
    normalize_database_url,
    parse_settings,
    token_secrets,
)
from backend.systems.base import QUIET_LAB_ARGS
from backend.systems.local.config import LocalSystem

EMBEDDED = Path(backend.__file__).parent / "data" / "embedded.yaml"

# line numbers below refer to this text
SITE = """\
site_name: Test site
tokens:
  - name: hub
    secret_env: TEST_HUB_TOKEN
    role: hub
  - name: admin
    secret_env: TEST_ADMIN_TOKEN
    role: admin
default_system: local
systems:
  local:
    kind: local
    command: [jupyterhub-singleuser]
    start_timeout: 30
login: demo
"""


def site_with(old: str, new: str) -> str:
    assert SITE.count(old) == 1, old
    return SITE.replace(old, new)


def error_of(text: str) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings(text, "site.yaml")
    return str(info.value)


# -- files that load ---------------------------------------------------------------


def test_embedded_site_file_loads() -> None:
    settings = load_settings(EMBEDDED)
    assert isinstance(settings, Settings)
    assert settings.default_system == "local"
    assert settings.default_system in settings.systems
    local = settings.systems["local"]
    assert isinstance(local, LocalSystem)
    assert local.kind == "local"
    assert local.command == ["jupyterhub-singleuser"]
    assert {t.role for t in settings.tokens} == {"hub", "admin"}
    assert {t.secret_env for t in settings.tokens} == {"LABLINK_HUB_TOKEN", "LABLINK_ADMIN_TOKEN"}


@pytest.mark.parametrize("no_tunnel", [False, True])
def test_lablink_up_reaches_the_hpc_labs_through_its_own_login_node(
    tmp_path: Path, no_tunnel: bool
) -> None:
    """What `lablink up` writes: the embedded ``hpc`` system with ``tunnel: ssh``
    through the login node it runs (when sshd is installed), or direct."""
    args = build_parser().parse_args(
        ["up", "--state-dir", str(tmp_path), "--sshd-port", "18022", "--tunnel-port", "18020",
         "--hub-api-port", "18081", "--hub-forward-port", "18023"]
        + (["--no-tunnel"] if no_tunnel else [])
    )  # fmt: skip
    up = Embedded(args, None, EMBEDDED)
    up._write_site()
    settings = load_settings(Path(up.site))
    hpc = settings.systems["hpc"]
    tunnels = site_tunnels(up.site, up.state)
    if no_tunnel:
        assert hpc.tunnel == "none" and tunnels is None  # type: ignore[union-attr]
        return
    assert loginnode.missing() is None, "sshd is part of the test peers (.ci/peers.sh)"
    assert hpc.tunnel == "ssh"  # type: ignore[union-attr]
    ssh = hpc.ssh  # type: ignore[union-attr]
    assert [(n.host, n.port) for n in ssh.login_nodes] == [("127.0.0.1", 18022)]
    assert ssh.key_file == str(tmp_path.resolve() / "ssh" / "id_ed25519")
    assert ssh.hub_url_for_labs() == "https://127.0.0.1:18023"  # TLS with a CA of its own
    tls = ssh.hub_forward.tls
    assert Path(tls.ca_file).parent == tmp_path.resolve() / "ssh" / "hub-forward"
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.cert_file, tls.key_file)
    assert settings.tunnel_service.url == "http://127.0.0.1:18020"
    assert settings.tunnel_service.hub_address() == ("127.0.0.1", 18081)
    assert tunnels == SiteTunnels("LABLINK_TUNNEL_TOKEN", 18020, own_login_node=True)


def test_valid_site_and_defaults() -> None:
    settings = parse_settings(SITE, "site.yaml")
    assert settings.site_name == "Test site"
    local = settings.systems["local"]
    assert local.start_timeout == 30
    assert local.stop_grace == 5
    assert local.output_lines == 20
    assert local.allow_root is False and local.run_as == ""  # never root by itself
    assert local.args == list(QUIET_LAB_ARGS)  # JupyterLab fetches no news, checks no update
    assert settings.state_dir == Path(".lablink")


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    settings = load_settings(path, {"state_dir": str(tmp_path / "state"), "site_name": "Other"})
    assert settings.state_dir == tmp_path / "state"
    assert settings.site_name == "Other"


def test_settings_are_frozen() -> None:
    settings = parse_settings(SITE)
    with pytest.raises(ValueError):
        settings.site_name = "changed"  # type: ignore[misc]


# -- errors that name the key and the line ------------------------------------------


def test_misspelt_key_names_dotted_key_and_line() -> None:
    text = site_with(
        "    command: [jupyterhub-singleuser]\n", "    comand: [jupyterhub-singleuser]\n"
    )
    message = error_of(text)
    assert message == "site file site.yaml, line 13: systems.local.comand: not a known setting"


def test_misspelt_top_level_key() -> None:
    message = error_of(site_with("site_name: Test site\n", "sitename: Test site\n"))
    assert message == "site file site.yaml, line 1: sitename: not a known setting"


def test_misspelt_token_key_in_a_list() -> None:
    message = error_of(site_with("    role: admin\n", "    rol: admin\n"))
    assert "site file site.yaml, line 8: tokens.1.rol: not a known setting" in message


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ("default_system: local\n", "", "default_system", None),
        ("    secret_env: TEST_HUB_TOKEN\n", "", "tokens.0.secret_env", 3),
    ],
    ids=["default_system", "secret_env"],
)
def test_missing_required_key(old: str, new: str, key: str, line: int | None) -> None:
    message = error_of(site_with(old, new))
    assert f": {key}: required but missing" in message
    if line is not None:
        assert f"line {line}: {key}:" in message


def test_missing_system_kind() -> None:
    message = error_of(site_with("    kind: local\n", ""))
    assert message.startswith("site file site.yaml, line 11: systems.local: ")
    assert "`kind` is required; one of: " in message and "unicore" in message


def test_unknown_system_kind_names_the_kinds_there_are() -> None:
    message = error_of(site_with("    kind: local\n", "    kind: lsf\n"))
    assert message.startswith("site file site.yaml, line 12: systems.local.kind: ")
    assert "'lsf' is not a kind of system Lablink knows; allowed: " in message
    assert "kubernetes, local, slurm, unicore" in message


def test_empty_file_lists_every_required_key() -> None:
    message = error_of("")
    for key in ("tokens", "systems", "default_system"):
        assert f"site file site.yaml: {key}: required but missing" in message


def test_default_system_not_among_systems() -> None:
    message = error_of(site_with("default_system: local\n", "default_system: juwels\n"))
    assert message.startswith("site file site.yaml, line 9: default_system: ")
    assert "'juwels' is not one of the systems (local)" in message


@pytest.mark.parametrize("name", ["Local", "1local", "lo_cal", "lo cal", "-local"])
def test_bad_system_name(name: str) -> None:
    text = site_with("default_system: local\n", f"default_system: '{name}'\n")
    text = text.replace("  local:\n", f"  '{name}':\n")
    message = error_of(text)
    assert "systems: system name" in message
    assert repr(name) in message
    assert "lower-case letters, digits and '-'" in message
    assert "line 10" in message


def test_system_name_with_a_trailing_newline() -> None:
    text = site_with("default_system: local\n", 'default_system: "local\\n"\n')
    message = error_of(text.replace("  local:\n", '  "local\\n":\n'))
    assert "systems: system name 'local\\n'" in message


def test_unknown_system_kind() -> None:
    message = error_of(site_with("    kind: local\n", "    kind: unicorn\n"))
    assert "systems.local" in message
    assert "unicorn" in message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"abc"', "valid number"),
        ("-1", "greater than 0"),
        ("0", "greater than 0"),
        ("99999", "less than or equal to 3600"),
        ("[1, 2]", "valid number"),
    ],
)
def test_wrong_type_or_range(value: str, words: str) -> None:
    message = error_of(site_with("    start_timeout: 30\n", f"    start_timeout: {value}\n"))
    assert message.startswith("site file site.yaml, line 14: systems.local.start_timeout: ")
    assert words in message


def test_command_must_not_be_empty() -> None:
    message = error_of(site_with("[jupyterhub-singleuser]", "[]"))
    assert "line 13: systems.local.command:" in message


def test_bad_token_variable_name() -> None:
    message = error_of(site_with("TEST_HUB_TOKEN", "test-hub-token"))
    assert "line 4: tokens.0.secret_env:" in message


def test_tokens_need_their_own_names() -> None:
    message = error_of(site_with("  - name: admin\n", "  - name: hub\n"))
    assert "every token needs its own name" in message


def test_every_problem_is_reported() -> None:
    text = site_with("    kind: local\n", "    kind: local\n    colour: red\n")
    text = text.replace("site_name: Test site\n", "sitename: x\n")
    message = error_of(text)
    lines = message.splitlines()
    assert len(lines) == 2
    assert set(lines) == {
        "site file site.yaml, line 1: sitename: not a known setting",
        "site file site.yaml, line 13: systems.local.colour: not a known setting",
    }


def test_invalid_yaml() -> None:
    message = error_of("tokens: [\n  - name: hub\n")
    assert message.startswith("site file site.yaml: not valid YAML")
    assert "Traceback" not in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert error_of(text) == "site file site.yaml: the top level must be a mapping of settings"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value) == f"site file {path}: cannot be read: No such file or directory"


def test_directory_is_not_a_site_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    assert str(info.value).startswith(f"site file {tmp_path}: cannot be read: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    path.chmod(0)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value) == f"site file {path}: cannot be read: Permission denied"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(SITE.encode().replace(b"Test site", b"Test \xff\xfe site"))
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"site file {path}: cannot be read: ")


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(site_with("    command:", "    comand:"))
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert (
        str(info.value) == f"site file {path}, line 13: systems.local.comand: not a known setting"
    )


# -- token secrets ---------------------------------------------------------------------


def test_token_secrets_maps_each_secret() -> None:
    settings = parse_settings(SITE)
    secrets = token_secrets(
        settings, {"TEST_HUB_TOKEN": "h" * 16, "TEST_ADMIN_TOKEN": "a" * 40, "OTHER": "x"}
    )
    assert set(secrets) == {"h" * 16, "a" * 40}
    assert secrets["h" * 16].name == "hub"
    assert secrets["h" * 16].role == "hub"
    assert secrets["a" * 40].role == "admin"


@pytest.mark.parametrize(
    "environ",
    [
        {"TEST_HUB_TOKEN": "h" * 20},
        {"TEST_HUB_TOKEN": "h" * 20, "TEST_ADMIN_TOKEN": ""},
        {"TEST_HUB_TOKEN": "h" * 20, "TEST_ADMIN_TOKEN": "a" * 15},
    ],
    ids=["unset", "empty", "short"],
)
def test_token_secret_missing_or_short(environ: dict[str, str]) -> None:
    settings = parse_settings(SITE)
    with pytest.raises(SettingsError) as info:
        token_secrets(settings, environ)
    message = str(info.value)
    assert message.startswith("tokens.admin: ")
    assert "TEST_ADMIN_TOKEN" in message
    assert "at least 16 characters" in message
    assert "a" * 15 not in message  # the secret itself is never shown


def test_token_secrets_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings(SITE)
    monkeypatch.setenv("TEST_HUB_TOKEN", "h" * 16)
    monkeypatch.delenv("TEST_ADMIN_TOKEN", raising=False)
    with pytest.raises(SettingsError, match="TEST_ADMIN_TOKEN"):
        token_secrets(settings)
    monkeypatch.setenv("TEST_ADMIN_TOKEN", "a" * 16)
    assert set(token_secrets(settings)) == {"h" * 16, "a" * 16}


# -- the database URL --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@db:5432/lablink", "postgresql+asyncpg://u@db:5432/lablink"),
        ("postgres://u@db/lablink", "postgresql+asyncpg://u@db/lablink"),
        ("sqlite:////var/lib/lablink/db.sqlite", "sqlite+aiosqlite:////var/lib/lablink/db.sqlite"),
        ("sqlite:///rel.sqlite", "sqlite+aiosqlite:///rel.sqlite"),
        ("postgresql+asyncpg://u@db/lablink", "postgresql+asyncpg://u@db/lablink"),
        ("sqlite+aiosqlite:///x.sqlite", "sqlite+aiosqlite:///x.sqlite"),
    ],
)
def test_normalize_database_url(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


def test_database_url_from_the_site_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABLINK_DATABASE_URL", raising=False)
    settings = parse_settings(SITE + "database_url: postgresql://u@db/lablink\n")
    assert settings.resolved_database_url == "postgresql+asyncpg://u@db/lablink"


def test_database_url_default_is_sqlite_in_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LABLINK_DATABASE_URL", raising=False)
    settings = parse_settings(SITE, overrides={"state_dir": str(tmp_path)})
    expected = f"sqlite+aiosqlite:///{tmp_path.resolve() / 'backend.sqlite'}"
    assert settings.resolved_database_url == expected


def test_environment_overrides_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings(SITE + "database_url: sqlite:///file.sqlite\n")
    monkeypatch.setenv("LABLINK_DATABASE_URL", "postgresql://prod@db/lablink")
    assert settings.resolved_database_url == "postgresql+asyncpg://prod@db/lablink"
    monkeypatch.setenv("LABLINK_DATABASE_URL", "")
    assert settings.resolved_database_url == "sqlite+aiosqlite:///file.sqlite"


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = "site_name: a\ndefault_system: local\nsite_name: b\n"
    with pytest.raises(SettingsError, match=r"line 3: site_name: given twice \(first on line 1\)"):
        parse_settings(text, "dup.yaml")
