# JupyterHub configuration for Lablink, used by `lablink hub` and `lablink up`.
#
# Every value comes from an environment variable so that `lablink up` (and a
# container) can set it without editing this file; a site with its own
# jupyterhub_config.py sets the same traits directly.
import os
import sys
from pathlib import Path

from backend.files import private_dir
from spawner.branding import SiteFace
from spawner.extraconfig import run_extra_config
from spawner.home import named_server_limit
from spawner.hubdb import use_wal

c = get_config()  # type: ignore[name-defined]  # noqa: F821

state = Path(os.environ.get("LABLINK_STATE_DIR", ".lablink")).resolve()
hub_dir = private_dir(state / "hub")

c.JupyterHub.bind_url = os.environ.get("LABLINK_HUB_URL", "http://127.0.0.1:8000")
# the hub's own API: where it listens, and how labs and the proxy reach it (in a
# cluster it listens on every address and is reached by its Service's name)
c.JupyterHub.hub_bind_url = os.environ.get("LABLINK_HUB_BIND_URL") or (
    f"http://127.0.0.1:{os.environ.get('LABLINK_HUB_API_PORT', '8081')}"
)
if os.environ.get("LABLINK_HUB_CONNECT_URL"):
    c.JupyterHub.hub_connect_url = os.environ["LABLINK_HUB_CONNECT_URL"]
# the address people use (behind an ingress): links, and the OIDC callback below
public_url = os.environ.get("LABLINK_PUBLIC_URL", "").rstrip("/")
if public_url:
    c.JupyterHub.public_url = public_url
# the hub's database: SQLite in the state directory, or a database of the admin's
if os.environ.get("LABLINK_HUB_DB_URL"):
    c.JupyterHub.db_url = os.environ["LABLINK_HUB_DB_URL"]
else:
    c.JupyterHub.db_url = f"sqlite:///{hub_dir / 'jupyterhub.sqlite'}"
    use_wal(hub_dir / "jupyterhub.sqlite")  # a commit is an append, not a journal's sync
c.JupyterHub.cookie_secret_file = str(hub_dir / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(hub_dir / "jupyterhub.pid")

# the proxy: started by the hub, or (LABLINK_PROXY_API_URL) one running apart that the
# hub only configures, with the token in CONFIGPROXY_AUTH_TOKEN
if os.environ.get("LABLINK_PROXY_API_URL"):
    c.ConfigurableHTTPProxy.api_url = os.environ["LABLINK_PROXY_API_URL"]
    c.ConfigurableHTTPProxy.should_start = False
else:
    c.ConfigurableHTTPProxy.api_url = (
        f"http://127.0.0.1:{os.environ.get('LABLINK_PROXY_API_PORT', '8001')}"
    )
    c.ConfigurableHTTPProxy.command = [
        os.environ.get("LABLINK_PROXY_COMMAND", "configurable-http-proxy")
    ]
    c.ConfigurableHTTPProxy.pid_file = str(hub_dir / "jupyterhub-proxy.pid")

c.JupyterHub.authenticator_class = "lablink-demo"
# the VO switcher in the header, the VO page, the home page of labs, the login page
c.JupyterHub.template_paths = [str(Path(__file__).parent / "templates")]
# the site's name, logo, login hint and support link, from the backend (started first)
site_face = SiteFace.from_environment()
site_face.load_now()
c.JupyterHub.template_vars = {"lablink_site": site_face}

# OpenID Connect login (instead of the demo login) when an issuer is given
if os.environ.get("LABLINK_OIDC_ISSUER"):
    c.JupyterHub.authenticator_class = "lablink-oidc"
    oidc = c.LablinkOIDCAuthenticator
    oidc.issuer = os.environ["LABLINK_OIDC_ISSUER"]
    oidc.client_id = os.environ.get("LABLINK_OIDC_CLIENT_ID", "")
    oidc.client_secret = os.environ.get("LABLINK_OIDC_CLIENT_SECRET", "")
    oidc.oauth_callback_url = (public_url or c.JupyterHub.bind_url.rstrip("/")) + (
        "/hub/oauth_callback"
    )
    oidc.login_service = os.environ.get("LABLINK_OIDC_NAME", "your institution")
    # the entitlements this hub trusts: urn:<namespace>:group:<group>#<authority>
    oidc.entitlement_namespace = os.environ.get("LABLINK_OIDC_ENTITLEMENT_NAMESPACE", "")
    oidc.entitlement_authority = os.environ.get("LABLINK_OIDC_ENTITLEMENT_AUTHORITY", "")
    if os.environ.get("LABLINK_OIDC_REFRESH_MARGIN"):
        oidc.refresh_margin = int(os.environ["LABLINK_OIDC_REFRESH_MARGIN"])
    if os.environ.get("LABLINK_OIDC_AUTH_REFRESH_AGE"):
        oidc.auth_refresh_age = int(os.environ["LABLINK_OIDC_AUTH_REFRESH_AGE"])
# JupyterHub admins (they may act on others' labs through the hub), comma-separated
admins = {name.strip() for name in os.environ.get("LABLINK_HUB_ADMINS", "").split(",")}
if admins - {""}:
    c.Authenticator.admin_users = admins - {""}
c.JupyterHub.spawner_class = "lablink"
c.JupyterHub.allow_named_servers = True
# named servers follow the active VO's labs_per_user (stopped ones do not count)
c.JupyterHub.named_server_limit_per_user = named_server_limit
# a hub that starts its own proxy (`lablink up`) stops the labs when it stops; a hub with
# a proxy apart (the Helm chart) is restarted by upgrades and leaves them running, as
# the proxy keeps their routes and the backend keeps following them
c.JupyterHub.cleanup_servers = not os.environ.get("LABLINK_PROXY_API_URL")
# starts pending at once before the hub answers 429 "Too many users trying to log in
# right now" (JupyterHub's default is 100: a workshop of 100 starting together sits
# right at it); a spawn costs the hub little, the backend admits each lab against its
# VO's quota, so the bound is only against overload
c.JupyterHub.concurrent_spawn_limit = int(
    os.environ.get("LABLINK_CONCURRENT_SPAWN_LIMIT", "500") or 0
)

# labs on HPC systems wait in queues; the backend bounds each wait itself
c.Spawner.start_timeout = 900
c.Spawner.http_timeout = 60
c.Spawner.default_url = "/lab"
# how often the hub asks the backend whether each lab still runs (seconds)
c.Spawner.poll_interval = int(os.environ.get("LABLINK_POLL_INTERVAL", "30"))

# idle labs are stopped by jupyterhub-idle-culler, a hub service (`lablink up` sets
# these from the site file's idle_culler; 0 seconds: never)
idle_timeout = int(os.environ.get("LABLINK_IDLE_TIMEOUT", "0") or 0)
if idle_timeout > 0:
    every = int(os.environ.get("LABLINK_IDLE_CULL_EVERY", "300") or 300)
    c.JupyterHub.services = [
        {
            "name": "idle-culler",
            "command": [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={idle_timeout}",
                f"--cull-every={every}",
            ],
        },
    ]
    c.JupyterHub.load_roles = [
        {
            "name": "idle-culler",
            "description": "stop labs nobody has used for a while",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        },
    ]

# the admin's own snippets (the Helm chart's hub.extraConfig): every *.py of this
# directory, in name order, run last with `c` in scope
extra_dir = os.environ.get("LABLINK_HUB_EXTRA_CONFIG", "")
if extra_dir:
    run_extra_config(Path(extra_dir), c)
