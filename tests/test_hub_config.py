"""spawner/jupyterhub_config.py read as JupyterHub reads it (traitlets' loader): the
variables a container sets (the Helm chart) and, without them, what `lablink up` has
always had."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

CONFIG = Path(str(files("spawner") / "jupyterhub_config.py"))
NEW = (
    "LABLINK_HUB_BIND_URL",
    "LABLINK_HUB_CONNECT_URL",
    "LABLINK_PROXY_API_URL",
    "LABLINK_PUBLIC_URL",
    "LABLINK_HUB_DB_URL",
    "LABLINK_HUB_EXTRA_CONFIG",
    "LABLINK_HUB_ADMINS",
)
OLD = (
    "LABLINK_HUB_URL",
    "LABLINK_HUB_API_PORT",
    "LABLINK_PROXY_API_PORT",
    "LABLINK_PROXY_COMMAND",
    "LABLINK_OIDC_ISSUER",
    "LABLINK_IDLE_TIMEOUT",
)


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: a state directory of the test's own, and a backend that
    refuses at once (the configuration asks it for the site's branding)."""
    for var in (*NEW, *OLD):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LABLINK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LABLINK_BACKEND_URL", "http://127.0.0.1:9")
    return tmp_path


def load() -> Config:
    return PyFileConfigLoader(CONFIG.name, path=str(CONFIG.parent)).load_config()


def test_unset_is_todays_configuration(hub_env: Path) -> None:
    c = load()
    hub_dir = (hub_env / "state" / "hub").resolve()
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000"
    assert c.JupyterHub.hub_bind_url == "http://127.0.0.1:8081"
    assert "hub_connect_url" not in c.JupyterHub
    assert "public_url" not in c.JupyterHub
    assert c.JupyterHub.db_url == f"sqlite:///{hub_dir / 'jupyterhub.sqlite'}"
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8001"
    assert "should_start" not in c.ConfigurableHTTPProxy
    assert c.ConfigurableHTTPProxy.command == ["configurable-http-proxy"]
    assert "admin_users" not in c.Authenticator
    assert c.JupyterHub.authenticator_class == "lablink-demo"
    assert c.JupyterHub.cleanup_servers is True  # Ctrl-C of `lablink up` stops the labs


def test_a_cluster_hub(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Helm chart sets: the hub listens on every address, the proxy runs apart,
    the OIDC callback is at the public address, the database is the admin's."""
    monkeypatch.setenv("LABLINK_HUB_BIND_URL", "http://0.0.0.0:8081")
    monkeypatch.setenv("LABLINK_HUB_CONNECT_URL", "http://lablink-hub.lablink.svc:8081")
    monkeypatch.setenv("LABLINK_PROXY_API_URL", "http://lablink-proxy-api:8001")
    monkeypatch.setenv("LABLINK_PUBLIC_URL", "https://hub.example.org/")
    monkeypatch.setenv("LABLINK_HUB_DB_URL", "postgresql://hub@db/hub")
    monkeypatch.setenv("LABLINK_HUB_ADMINS", " alice, bob ,,")
    monkeypatch.setenv("LABLINK_OIDC_ISSUER", "https://login.example.org")
    c = load()
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8081"
    assert c.JupyterHub.hub_connect_url == "http://lablink-hub.lablink.svc:8081"
    assert c.JupyterHub.public_url == "https://hub.example.org"
    assert c.JupyterHub.db_url == "postgresql://hub@db/hub"
    assert c.ConfigurableHTTPProxy.api_url == "http://lablink-proxy-api:8001"
    assert c.ConfigurableHTTPProxy.should_start is False
    assert "command" not in c.ConfigurableHTTPProxy
    assert c.JupyterHub.cleanup_servers is False  # an upgrade restarts the hub, not the labs
    assert c.Authenticator.admin_users == {"alice", "bob"}
    assert c.LablinkOIDCAuthenticator.oauth_callback_url == (
        "https://hub.example.org/hub/oauth_callback"
    )


def test_extra_config_runs_in_name_order_last(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = hub_env / "extra"
    extra.mkdir()
    (extra / "20-second.py").write_text("c.Spawner.start_timeout = 2\nc.JupyterHub.x = order\n")
    (extra / "10-first.py").write_text(
        "order = 1\nc.Spawner.start_timeout = 1\nc.Spawner.http_timeout = 7\n"
    )
    (extra / "README").write_text("not python")
    (extra / "..data").mkdir()  # a ConfigMap's own entry
    monkeypatch.setenv("LABLINK_HUB_EXTRA_CONFIG", str(extra))
    with pytest.raises(SystemExit) as failed:  # each file has its own scope: `order` is not
        load()
    assert str(failed.value) == (
        f"hub extra configuration {extra / '20-second.py'}, line 2 failed: NameError: "
        "name 'order' is not defined."
    )
    (extra / "20-second.py").write_text("c.Spawner.start_timeout = 2\n")
    c = load()
    assert c.Spawner.start_timeout == 2  # after the 900 of Lablink's own, after 10-first
    assert c.Spawner.http_timeout == 7


@pytest.mark.parametrize(
    ("source", "sentence"),
    [
        ("c.Spawner.x = (\n", "line 1 failed: SyntaxError: '(' was never closed."),
        ("import no_such_module_here\n", "line 1 failed: ModuleNotFoundError: No module named"),
        ("raise ValueError('a\\nb')\n", "line 1 failed: ValueError: a."),
    ],
)
def test_a_failing_extra_config_names_itself(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch, source: str, sentence: str
) -> None:
    extra = hub_env / "extra"
    extra.mkdir()
    (extra / "50-bad.py").write_text(source)
    monkeypatch.setenv("LABLINK_HUB_EXTRA_CONFIG", str(extra))
    with pytest.raises(SystemExit) as failed:
        load()
    message = str(failed.value)
    assert message.startswith(f"hub extra configuration {extra / '50-bad.py'}, {sentence}")
    assert "\n" not in message


def test_extra_config_must_be_a_directory(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABLINK_HUB_EXTRA_CONFIG", str(hub_env / "missing"))
    with pytest.raises(SystemExit) as failed:
        load()
    assert str(failed.value).startswith(
        f"LABLINK_HUB_EXTRA_CONFIG: {hub_env / 'missing'} is not a directory;"
    )
