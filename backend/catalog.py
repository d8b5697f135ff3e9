"""What a person may start, and the check of a start request's options (pure).

The hub's form is a convenience; this is where options are decided. Every
refusal names the field and what is allowed, in one sentence. What is
particular to a kind of system (its choices, its form fields, its checks)
comes from the kind's package through the registry.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings
from .store import Usage
from .systems.base import OptionError, Viewer, listed, shown
from .systems.registry import kind_of
from .vos import Identity, VOSettings, entitlement_grants

__all__ = ["OptionError", "Viewer", "catalog", "validate_options", "viewer"]


def viewer(
    settings: Settings,
    user: str,
    groups: frozenset[str] = frozenset(),
    entitlements: frozenset[str] = frozenset(),
    vo: str | None = None,
) -> Viewer:
    identity = Identity(user=user, groups=groups, entitlements=entitlements)
    grants = entitlement_grants(settings.identity.pattern(), entitlements)
    return Viewer(identity, grants, vo, settings.vos.get(vo) if vo else None)


def system_entry(name: str, settings: Settings, who: Viewer) -> dict[str, Any] | None:
    """The catalog entry of one system for this person; None if it is not theirs."""
    if not who.allows_system(name):
        return None
    system = settings.systems[name]
    own = kind_of(system).entry(name, system, who)
    if own is None:
        return None
    return {
        "name": name,
        "kind": system.kind,
        "display_name": system.display_name or name,
        "description": system.description,
        "start_limit": system.start_limit(),
        **own,
    }


def quota_full(display_name: str, vo: VOSettings, usage: Usage | None) -> str | None:
    """The sentence a new lab in this VO is refused with now, or None if one fits."""
    q, labs, mine = vo.quota, usage.labs if usage else 0, usage.user_labs if usage else 0
    if q.labs_per_user is not None and mine >= q.labs_per_user:
        return (
            f"You have {mine} active labs in the VO {display_name}, as many as it allows "
            "one person; stop one of them first."
        )
    if q.labs is not None and labs >= q.labs:
        return (
            f"The VO {display_name} has all of its {q.labs} labs in use; try again when one "
            "has stopped."
        )
    return None


def quota_entry(vo: VOSettings, usage: Usage | None, name: str = "") -> dict[str, Any]:
    """A VO's limits: used/limit for active labs, the maxima of one lab (None: no limit),
    and ``full``: the sentence a new lab is refused with now (None: one fits)."""
    q = vo.quota
    return {
        "labs": {"used": usage.labs if usage else 0, "limit": q.labs},
        "labs_per_user": {"used": usage.user_labs if usage else 0, "limit": q.labs_per_user},
        "full": quota_full(vo.display_name or name, vo, usage),
        "per_lab": {
            "nodes": q.nodes,
            "gpus": q.gpus,
            "runtime": q.runtime,
            "cpu": q.cpu,
            "memory": q.memory,
        },
    }


def vo_entry(name: str, vo: VOSettings, active: bool, usage: Usage | None) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": vo.display_name or name,
        "description": vo.description,
        "active": active,
        "quota": quota_entry(vo, usage, name),
    }


def catalog(
    settings: Settings,
    user: str,
    groups: frozenset[str] = frozenset(),
    *,
    entitlements: frozenset[str] = frozenset(),
    vo: str | None = None,
    vos: list[str] | None = None,
    usage: dict[str, Usage] | None = None,
) -> dict[str, Any]:
    """What ``user`` may start in ``vo`` (their active VO), and their VOs with quota.

    ``vos`` are the person's VOs and ``usage`` the active labs of each; a site
    without VOs passes neither.
    """
    who = viewer(settings, user, groups, entitlements, vo)
    systems = []
    for name in settings.systems:
        entry = system_entry(name, settings, who)
        if entry is not None:
            systems.append(entry)
    usage = usage or {}
    return {
        "site_name": settings.site_name,
        "default_system": settings.default_system,
        "systems": systems,
        "vo": vo,
        "vos": [vo_entry(v, settings.vos[v], v == vo, usage.get(v)) for v in vos or []],
    }


def validate_options(
    settings: Settings,
    options: dict[str, Any],
    user: str = "",
    groups: frozenset[str] = frozenset(),
    *,
    entitlements: frozenset[str] = frozenset(),
    vo: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Return the system name and the normalized options, or raise OptionError.

    With ``vo``, only what that VO allows is accepted, up to its per-lab maxima.
    """
    who = viewer(settings, user, groups, entitlements, vo)
    system_name = options.get("system", None)
    if system_name in (None, ""):
        system_name = settings.default_system
        if not who.allows_system(system_name):  # the VO's first system instead
            system_name = next((s for s in settings.systems if who.allows_system(s)), "")
    offered = [s for s in settings.systems if who.allows_system(s)]
    if not isinstance(system_name, str) or system_name not in offered:
        names = listed([settings.systems[s].display_name or s for s in offered])
        if isinstance(system_name, str) and system_name in settings.systems:
            chosen = settings.systems[system_name].display_name or system_name
            refusal = f"System: {chosen} is not offered{who.in_vo}"
        else:
            refusal = f"System: {shown(system_name)} is not a system of this site"
        choose_from = f"choose {names}" if names else "there is none for you here"
        raise OptionError("system", f"{refusal}; {choose_from}.")
    system = settings.systems[system_name]
    kind = kind_of(system)
    keys = kind.option_keys
    for key in options:
        if key not in keys:
            raise OptionError(
                str(key)[:64],
                f"{shown(key)} is not an option of system {system.display_name or system_name}; "
                f"its options are {listed(list(keys), 'and')}.",
            )
    return system_name, kind.check(system_name, system, options, who)
