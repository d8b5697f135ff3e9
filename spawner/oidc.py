"""Login through an OpenID Connect provider (Unity-IdM, Helmholtz AAI, Keycloak, ...).

``LablinkOIDCAuthenticator`` is oauthenticator's ``GenericOAuthenticator`` set up
the way an HPC centre's hub needs it:

- the endpoints come from the provider's discovery document (``issuer``), or
  are given one by one as for any GenericOAuthenticator;
- ``auth_state`` (encrypted; JUPYTERHUB_CRYPT_KEY) keeps the access and
  refresh tokens, when the access token expires, and the person's entitlements;
- the hub's groups follow the claims: the ``groups`` claim and the group
  entitlements (``urn:...:group:<name>#...``);
- the access token is refreshed with the refresh token when it expires within
  ``refresh_margin`` seconds: before every spawn (``refresh_pre_spawn``),
  whenever the hub checks the login (``auth_refresh_age``), and while the
  person has an active lab (the spawner: spawner/refresh.py). When the refresh
  fails, the person logs in again (``LablinkSpawnHandler`` sends them there
  from the spawn form; their active labs tell them to).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.request
from typing import Any

from oauthenticator.generic import GenericOAuthenticator
from tornado.httpclient import HTTPClientError
from traitlets import Float, Integer, List, TraitError, Unicode, default, validate

from backend.config_base import https_url

from .vo import VOPages

MAX_CLAIM_VALUES = 1000
MAX_CLAIM_LENGTH = 512


def _strings(value: Any) -> list[str]:
    """A claim as a list of strings (one string, a list, or nothing), bounded."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and 0 < len(v) <= MAX_CLAIM_LENGTH][
        :MAX_CLAIM_VALUES
    ]


class LablinkOIDCAuthenticator(VOPages, GenericOAuthenticator):
    issuer = Unicode(
        "",
        help="""The OpenID Connect issuer, e.g. https://login.helmholtz.de/oauth2.

        When set, authorize_url, token_url and userdata_url default to the
        endpoints of its discovery document (/.well-known/openid-configuration),
        read once when the hub starts.""",
    ).tag(config=True)

    discovery_timeout = Float(
        10.0, help="Seconds to wait for the issuer's discovery document at start."
    ).tag(config=True)

    @validate("issuer")
    def _issuer_is_tls(self, proposal: dict[str, Any]) -> str:
        issuer = str(proposal["value"])
        if not issuer:
            return issuer
        try:
            return https_url(issuer)
        except ValueError as exc:
            raise TraitError(f"LablinkOIDCAuthenticator.issuer: {exc}") from None

    ca_bundle = Unicode(
        "",
        help="""A CA file (PEM) to verify the provider's TLS certificate with (discovery,
        token and userinfo calls); unset: the system's CAs.""",
    ).tag(config=True)

    @default("http_request_kwargs")
    def _default_http_request_kwargs(self) -> dict[str, Any]:
        return {"ca_certs": self.ca_bundle} if self.ca_bundle else {}

    entitlements_claim = Unicode(
        "eduperson_entitlement",
        help="""The claim that lists the person's entitlements (AARC-G069 URNs).

        They are kept in auth_state and sent to the backend, which maps them to
        accounts, projects and VOs (the site file's identity.entitlement_pattern
        and vos.*.members.entitlements).""",
    ).tag(config=True)

    groups_claim = Unicode("groups", help="The claim with plain group names; empty: none.").tag(
        config=True
    )

    entitlement_namespace = Unicode(
        "",
        help="""The namespace of the group entitlements this hub trusts, e.g.
        'geant:h-df.de' (urn:<namespace>:group:<group>#<authority>). An AAI proxy
        passes on entitlements of many communities: only this one's make hub groups.
        Unset (and no group_entitlement_pattern): groups come only from groups_claim.""",
    ).tag(config=True)

    entitlement_authority = Unicode(
        "",
        help="""The authority that must follow '#' in a group entitlement, e.g.
        'login.helmholtz.de'; unset: an entitlement of the namespace without one.""",
    ).tag(config=True)

    group_entitlement_pattern = Unicode(
        help="""A regular expression with a named group 'group': each entitlement that
        matches makes the person a member of that hub group (subgroups keep their
        ':' separators). Default: anchored to entitlement_namespace and
        entitlement_authority; empty: groups come only from groups_claim.""",
    ).tag(config=True)

    @default("group_entitlement_pattern")
    def _default_group_entitlement_pattern(self) -> str:
        if not self.entitlement_namespace:
            return ""
        authority = self.entitlement_authority
        after = f"#{re.escape(authority)}" if authority else ""
        return rf"^urn:{re.escape(self.entitlement_namespace)}:group:(?P<group>[^#]+){after}$"

    @validate("group_entitlement_pattern")
    def _valid_pattern(self, proposal: dict[str, Any]) -> str:
        pattern = str(proposal["value"])
        if pattern and "group" not in re.compile(pattern).groupindex:
            raise ValueError("group_entitlement_pattern needs a named group 'group'")
        return pattern

    refresh_margin = Integer(
        300,
        help="""Refresh the access token when it expires within this many seconds.

        The hub hands the token to the backend at every spawn and poll, which uses
        it for UNICORE; a spawn therefore always carries a token valid for at
        least this long, and while a person's lab is active the hub renews the
        token this long before it expires (at every poll, and every half margin,
        at most 30 s, while a start waits in a queue). A margin longer than the
        provider's token lifetime refreshes at every spawn and every check.""",
    ).tag(config=True)

    scope = List(  # type: ignore[assignment]
        Unicode(),
        default_value=["openid", "profile", "email", "offline_access", "eduperson_entitlement"],
        help="The scopes asked for: offline_access brings the refresh token.",
    ).tag(config=True)

    @default("login_service")
    def _default_login_service(self) -> str:
        return "your institution"

    @default("username_claim")
    def _default_username_claim(self) -> str:
        return "preferred_username"

    @default("enable_auth_state")
    def _default_enable_auth_state(self) -> bool:
        return True

    @default("manage_groups")
    def _default_manage_groups(self) -> bool:
        return True

    @default("auth_state_groups_key")
    def _default_auth_state_groups_key(self) -> Any:
        return lambda auth_state: auth_state.get("lablink_groups", [])

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self) -> bool:
        return True

    @default("auth_refresh_age")
    def _default_auth_refresh_age(self) -> int:
        return 60

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        # whoever the provider vouches for may log in; what they may start is
        # decided by the backend (VO memberships, accounts)
        return True

    # -- discovery ----------------------------------------------------------------

    _discovered: dict[str, Any] | None = None

    def _discovery(self) -> dict[str, Any]:
        if self._discovered is None:
            if not self.issuer:
                return {}
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"LablinkOIDCAuthenticator.issuer must be a URL, not {url!r}")
            context = ssl.create_default_context(cafile=self.ca_bundle or None)
            with urllib.request.urlopen(  # noqa: S310 (https, or http to this machine)
                url, timeout=self.discovery_timeout, context=context
            ) as resp:
                self._discovered = json.load(resp)
        return self._discovered or {}

    @default("authorize_url")
    def _default_authorize_url(self) -> str:
        return str(self._discovery().get("authorization_endpoint", ""))

    @default("token_url")
    def _default_token_url(self) -> str:
        return str(self._discovery().get("token_endpoint", ""))

    @default("userdata_url")
    def _default_userdata_url(self) -> str:
        return str(self._discovery().get("userinfo_endpoint", ""))

    # -- claims -------------------------------------------------------------------

    def groups_from(self, user_info: dict[str, Any], entitlements: list[str]) -> list[str]:
        groups = set(_strings(user_info.get(self.groups_claim))) if self.groups_claim else set()
        if self.group_entitlement_pattern:
            regex = re.compile(self.group_entitlement_pattern)
            for ent in entitlements:
                match = regex.fullmatch(ent)
                if match and match.group("group"):
                    groups.add(match.group("group")[:255])
        return sorted(groups)

    async def build_auth_state_dict(
        self, token_info: dict[str, Any], user_info: dict[str, Any]
    ) -> dict[str, Any]:
        # when the access token expires, fixed at the moment it was issued
        if "lablink_expires_at" not in token_info:
            lifetime = token_info.get("expires_in")
            expires = time.time() + float(lifetime) if isinstance(lifetime, int | float) else None
            token_info["lablink_expires_at"] = expires
        state: dict[str, Any] = super().build_auth_state_dict(token_info, user_info)
        entitlements = sorted(set(_strings(user_info.get(self.entitlements_claim))))
        state["expires_at"] = token_info["lablink_expires_at"]
        state["entitlements"] = entitlements
        state["lablink_groups"] = self.groups_from(user_info, entitlements)
        return state

    # -- refresh ------------------------------------------------------------------

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        """The person's new auth model, True if nothing changed, or False: log in again.

        While the access token stays valid beyond ``refresh_margin``, the claims
        are read again with it (groups and entitlements may have changed);
        otherwise, or when the provider refuses it, the refresh token is used.
        """
        if handler is not None and not hasattr(handler, "_token_authenticated"):
            # JupyterHub 6.1 reads this after a failed refresh but sets it only for
            # token-authenticated requests: a cookie-authenticated spawn would break
            handler._token_authenticated = False
        state = await user.get_auth_state()
        if not state or not state.get("access_token") or not state.get("token_response"):
            self.log.info("%s has no tokens in auth_state; login required", user.name)
            return False
        expires_at = state.get("expires_at")
        if isinstance(expires_at, int | float) and expires_at - time.time() > self.refresh_margin:
            try:
                return await self._token_to_auth_model(state["token_response"])
            except HTTPClientError as exc:
                if not 400 <= exc.code < 500:
                    raise
                self.log.info("access token of %s refused (%s); refreshing", user.name, exc.code)
        refresh_token = state.get("refresh_token")
        if not refresh_token:
            self.log.info("%s has no refresh token; login required", user.name)
            return False
        try:
            params = self.build_refresh_token_request_params(refresh_token)
            token_info = await self.get_token_info(handler, params)
        except Exception as exc:
            # an expired or revoked refresh token: the person has to log in again
            self.log.info("refresh of %s's login failed (%s); login required", user.name, exc)
            return False
        if not token_info.get("refresh_token"):  # the provider may keep the old one valid
            token_info["refresh_token"] = refresh_token
        try:
            model = await self._token_to_auth_model(token_info)
        except Exception as exc:
            self.log.warning("new access token of %s does not work (%s)", user.name, exc)
            return False
        self.log.info("refreshed the access token of %s", user.name)
        return model
