"""Who a person is to the backend, and the VOs (virtual organizations) of the site.

The hub tells the backend a person's groups and entitlements (from the OIDC
provider's claims); this module turns them into VO memberships and, with the
site's ``identity`` (the entitlements' namespace and authority it trusts, or its
own ``entitlement_pattern``), into accounts and projects on HPC systems. It is
pure: the database and the API use it, it uses neither.

Example of the site file's part::

    identity:   # urn:geant:h-df.de:res:<system>:<project>:act:<account>#login.helmholtz.de
      namespace: geant:h-df.de
      authority: login.helmholtz.de
    vos:
      workshop:
        display_name: HPC workshop
        members: {groups: [workshop-2026], entitlements: ["urn:geant:h-df.de:group:workshop#*"]}
        systems: [hpc, cloud]
        partitions: {hpc: [devel]}
        flavors: {cloud: [small]}
        quota: {labs: 30, labs_per_user: 1, nodes: 1, runtime: 120, cpu: 2, memory: 4}
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, field_validator

from .config_base import NAME_PATTERN, SITE_NAME_PATTERN, Strict

# AARC-G069 style: urn:<namespace>:res:<system>:<project>:act:<account>[#<authority>]
DEFAULT_ENTITLEMENT_PATTERN = (
    r"^urn:(?P<namespace>[^#]+?):res:(?P<system>[^:#]+):(?P<project>[^:#]+)"
    r":act:(?P<account>[^:#]+)(#.*)?$"
)
ENTITLEMENT_GROUPS = ("system", "project", "account")
MAX_ENTITLEMENT = 512
ACCOUNT = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
PROJECT = re.compile(SITE_NAME_PATTERN)


class IdentitySettings(Strict):
    """How the claims of the OIDC provider become accounts and projects.

    An AAI proxy (Helmholtz AAI, EGI Check-in) passes on entitlements of many
    communities and authorities; only those of this site's ``namespace`` and
    ``authority`` give accounts, unless ``entitlement_pattern`` says otherwise."""

    namespace: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._:-]{0,200}$",
        description="the entitlements' namespace this site trusts, e.g. 'geant:h-df.de' "
        "(urn:<namespace>:res:...); unset, with no entitlement_pattern: entitlements give "
        "no accounts",
    )
    authority: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._:/-]{0,200}$",
        description="the authority that must follow '#', e.g. 'login.helmholtz.de'; unset: "
        "an entitlement of the namespace without one",
    )
    entitlement_pattern: str = Field(
        default="",
        description="a regular expression with the named groups system, project and account; "
        "each entitlement that matches gives that account and project on that system (the "
        "system's name in lower case). Unset: "
        "^urn:<namespace>:res:<system>:<project>:act:<account>#<authority>$",
    )

    @field_validator("entitlement_pattern")
    @classmethod
    def _pattern(cls, pattern: str) -> str:
        if not pattern:
            return pattern
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        missing = [g for g in ENTITLEMENT_GROUPS if g not in compiled.groupindex]
        if missing:
            raise ValueError(f"the pattern needs the named groups {', '.join(missing)}")
        return pattern

    def pattern(self) -> str | None:
        """The pattern entitlements are matched with; None: they give nothing."""
        if self.entitlement_pattern:
            return self.entitlement_pattern
        if not self.namespace:
            return None
        return anchored_pattern(self.namespace, self.authority)


def anchored_pattern(namespace: str, authority: str) -> str:
    """The AARC-G069 resource pattern of one namespace and authority."""
    after = f"#{re.escape(authority)}" if authority else ""
    return (
        rf"^urn:{re.escape(namespace)}:res:(?P<system>[^:#]+):(?P<project>[^:#]+)"
        rf":act:(?P<account>[^:#]+){after}$"
    )


class Members(Strict):
    """Who is in a VO: any of these makes a person a member."""

    users: list[str] = Field(
        default_factory=list, description="user names ('*': everybody who can log in)"
    )
    groups: list[str] = Field(default_factory=list, description="hub groups (from the claims)")
    entitlements: list[str] = Field(
        default_factory=list,
        description="entitlements, exactly or as shell-style patterns ('*' matches anything)",
    )


class Quota(Strict):
    """Limits of a VO; a limit left out is no limit."""

    labs: int | None = Field(default=None, ge=0, description="labs of the VO active at once")
    labs_per_user: int | None = Field(
        default=None, ge=0, description="labs one person may have active at once in the VO"
    )
    nodes: int | None = Field(default=None, ge=0, description="nodes per lab, at most")
    gpus: int | None = Field(default=None, ge=0, description="GPUs per lab, at most")
    runtime: int | None = Field(default=None, ge=1, description="minutes per lab, at most")
    cpu: float | None = Field(default=None, gt=0, description="CPU cores per lab, at most")
    memory: float | None = Field(default=None, gt=0, description="GiB of memory per lab, at most")


SystemName = Annotated[str, Field(pattern=NAME_PATTERN)]
SiteName = Annotated[str, Field(pattern=SITE_NAME_PATTERN)]


class VOSettings(Strict):
    """A virtual organization: who is in it, what it may use, and its quota."""

    display_name: str = Field(default="", description="the name people see; unset: the key")
    description: str = Field(default="", description="one line shown beside the name")
    members: Members = Field(default_factory=Members, description="who is in the VO")
    systems: list[SystemName] | None = Field(
        default=None, description="the systems the VO may use; unset: all"
    )
    partitions: dict[SystemName, list[SiteName]] = Field(
        default_factory=dict,
        description="per batch system, the partitions the VO may use; a system left out: all",
    )
    flavors: dict[SystemName, list[SiteName]] = Field(
        default_factory=dict,
        description="per cloud system, the flavors the VO may use; a system left out: all",
    )
    quota: Quota = Field(default_factory=Quota, description="the VO's limits")

    def admits(self, identity: Identity) -> bool:
        m = self.members
        if "*" in m.users or identity.user in m.users:
            return True
        if identity.groups & set(m.groups):
            return True
        return any(
            fnmatch.fnmatchcase(ent, pattern)
            for pattern in m.entitlements
            for ent in identity.entitlements
        )

    def allows_system(self, system: str) -> bool:
        return self.systems is None or system in self.systems

    def allows(self, key: str, system: str, choice: str) -> bool:
        """Whether the VO lets its members choose ``choice`` of ``key`` (``partitions``
        or ``flavors``) on ``system``; a system the VO's ``key`` leaves out: all."""
        restricted: dict[str, list[str]] = getattr(self, key)
        return system not in restricted or choice in restricted[system]


@dataclass(frozen=True)
class Identity:
    """A person as the hub describes them: name, groups, entitlements."""

    user: str
    groups: frozenset[str] = frozenset()
    entitlements: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Grants:
    """Accounts and projects from entitlements, per system; ``pairs``: per system, the
    projects each account is granted with (an entitlement grants one pair)."""

    accounts: dict[str, list[str]] = field(default_factory=dict)
    projects: dict[str, list[str]] = field(default_factory=dict)
    pairs: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def entitlement_grants(pattern: str | None, entitlements: frozenset[str]) -> Grants:
    """The (account, project) each matching entitlement gives, per system, sorted (none
    without a pattern)."""
    if pattern is None:
        return Grants()
    regex = re.compile(pattern)
    accounts: dict[str, set[str]] = {}
    projects: dict[str, set[str]] = {}
    pairs: dict[str, dict[str, set[str]]] = {}
    for ent in entitlements:
        match = regex.fullmatch(ent)
        if not match:
            continue
        system = match.group("system").lower()
        account, project = match.group("account"), match.group("project")
        if ACCOUNT.fullmatch(account):  # anything else cannot be a login name: skipped
            accounts.setdefault(system, set()).add(account)
            granted = pairs.setdefault(system, {}).setdefault(account, set())
            if PROJECT.fullmatch(project):
                projects.setdefault(system, set()).add(project)
                granted.add(project)
    return Grants(
        accounts={s: sorted(a) for s, a in accounts.items()},
        projects={s: sorted(p) for s, p in projects.items()},
        pairs={s: {a: sorted(p) for a, p in sorted(g.items())} for s, g in pairs.items()},
    )


def memberships(vos: dict[str, VOSettings], identity: Identity) -> list[str]:
    """The VOs this person is in, in the site file's order."""
    return [name for name, vo in vos.items() if vo.admits(identity)]
