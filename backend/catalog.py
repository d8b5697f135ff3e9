"""What a user may start, and the check of a start request's options (pure).

The hub's form is a convenience; this is where options are decided. Every
refusal names the field and what is allowed, in one sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .cloud.config import MAX_IMAGE, Flavor, KubernetesSystem, is_image_reference
from .settings import LocalSystem, Settings
from .store import Usage
from .unicore.config import Partition, Range, UnicoreSystem
from .vos import Grants, Identity, VOSettings, entitlement_grants

AnySystem = LocalSystem | UnicoreSystem | KubernetesSystem

UNICORE_KEYS = (
    "system",
    "account",
    "project",
    "partition",
    "nodes",
    "runtime",
    "gpus",
    "reservation",
)
KUBERNETES_KEYS = ("system", "flavor", "image", "cpu", "memory")


class OptionError(ValueError):
    """A start option is not acceptable; the message is for the person."""


@dataclass(frozen=True)
class Viewer:
    """Whom the catalog is for: the person, what their entitlements give, their VO."""

    identity: Identity
    grants: Grants
    vo_name: str | None = None
    vo: VOSettings | None = None

    @property
    def in_vo(self) -> str:
        return f" in VO {self.vo_name!r}" if self.vo_name else ""

    def accounts(self, name: str, system: UnicoreSystem) -> tuple[list[str], list[str]]:
        """Accounts and projects on ``system``: the site's grants, then the entitlements'."""
        accounts, projects = system.grants_for(self.identity.user, self.identity.groups)
        for acc in self.grants.accounts.get(name, []):
            if acc not in accounts:
                accounts.append(acc)
        for proj in self.grants.projects.get(name, []):
            if proj not in projects:
                projects.append(proj)
        return accounts, projects

    def allows_system(self, name: str) -> bool:
        return self.vo is None or self.vo.allows_system(name)

    def partitions(self, name: str, system: UnicoreSystem) -> dict[str, Partition]:
        """The partitions the VO lets this person use, their ranges cut to its maxima."""
        out: dict[str, Partition] = {}
        for pname, part in system.partitions.items():
            if self.vo is not None and not self.vo.allows_partition(name, pname):
                continue
            quota = self.vo.quota if self.vo else None
            nodes = _cut(part.nodes, quota.nodes if quota else None)
            runtime = _cut(part.runtime, quota.runtime if quota else None)
            gpus = _cut(part.gpus, quota.gpus if quota else None)
            if nodes is None or runtime is None or gpus is None:
                continue  # its smallest lab is more than the VO allows
            out[pname] = part.model_copy(update={"nodes": nodes, "runtime": runtime, "gpus": gpus})
        return out

    def flavors(self, name: str, system: KubernetesSystem) -> dict[str, Flavor]:
        """The flavors the VO lets this person use (none larger than its maxima)."""
        if self.vo is None:
            return dict(system.flavors)
        q = self.vo.quota
        return {
            fname: f
            for fname, f in system.flavors.items()
            if self.vo.allows_flavor(name, fname)
            and (q.cpu is None or f.cpu <= q.cpu)
            and (q.memory is None or f.memory <= q.memory)
            and (q.gpus is None or f.gpus <= q.gpus)
        }


def _cut(r: Range, most: int | None) -> Range | None:
    """``r`` with its maximum lowered to ``most``; None if even its minimum is above it."""
    if most is None or r.max <= most:
        return r
    if r.min > most:
        return None
    return Range(min=r.min, max=most, default=min(r.initial, most))


def viewer(
    settings: Settings,
    user: str,
    groups: frozenset[str] = frozenset(),
    entitlements: frozenset[str] = frozenset(),
    vo: str | None = None,
) -> Viewer:
    identity = Identity(user=user, groups=groups, entitlements=entitlements)
    grants = entitlement_grants(settings.identity.entitlement_pattern, entitlements)
    return Viewer(identity, grants, vo, settings.vos.get(vo) if vo else None)


def _range(r: Range) -> dict[str, int]:
    return {"min": r.min, "max": r.max, "default": r.initial}


def _partition_entry(system: UnicoreSystem, name: str, part: Partition) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": part.display_name or name,
        "description": part.description,
        "interactive": part.interactive,
        "nodes": _range(part.nodes),
        "runtime": _range(part.runtime),
        "gpus": _range(part.gpus),
        "reservations": [r for r, res in system.reservations.items() if name in res.partitions],
    }


def _flavor_entry(name: str, flavor: Flavor) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": flavor.display_name or name,
        "description": flavor.description,
        "cpu": flavor.cpu,
        "memory": flavor.memory,
        "gpus": flavor.gpus,
    }


def system_entry(name: str, system: AnySystem, who: Viewer) -> dict[str, Any] | None:
    """The catalog entry of one system for this person; None if it is not theirs."""
    if not who.allows_system(name):
        return None
    entry: dict[str, Any] = {
        "name": name,
        "kind": system.kind,
        "display_name": system.display_name or name,
        "description": system.description,
    }
    if isinstance(system, UnicoreSystem):
        accounts, projects = who.accounts(name, system)
        partitions = who.partitions(name, system)
        if not accounts or not partitions:
            return None
        entry["accounts"] = accounts
        entry["projects"] = projects
        entry["partitions"] = [_partition_entry(system, p, part) for p, part in partitions.items()]
    if isinstance(system, KubernetesSystem):
        flavors = who.flavors(name, system)
        if not flavors:
            return None
        entry["flavors"] = [_flavor_entry(f, flavor) for f, flavor in flavors.items()]
        entry["images"] = [
            {"image": i.image, "display_name": i.display_name or i.image,
             "description": i.description}
            for i in system.images
        ]  # fmt: skip
        entry["image_patterns"] = system.image_patterns
    return entry


def quota_entry(vo: VOSettings, usage: Usage | None) -> dict[str, Any]:
    """A VO's limits: used/limit for active labs, the maxima of one lab (None: no limit)."""
    q = vo.quota
    return {
        "labs": {"used": usage.labs if usage else 0, "limit": q.labs},
        "labs_per_user": {"used": usage.user_labs if usage else 0, "limit": q.labs_per_user},
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
        "quota": quota_entry(vo, usage),
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
    for name, system in settings.systems.items():
        entry = system_entry(name, system, who)
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


def allowed_keys(system: AnySystem) -> tuple[str, ...]:
    if isinstance(system, UnicoreSystem):
        return UNICORE_KEYS
    if isinstance(system, KubernetesSystem):
        return KUBERNETES_KEYS
    return ("system",)


def _text(value: Any) -> str:
    return repr(value)[:64] if isinstance(value, str) else str(value)[:64]


def _choose(key: str, value: Any, allowed: list[str], where: str) -> str:
    """One of ``allowed``; the first when the request leaves it out."""
    if value in (None, ""):
        if not allowed:
            raise OptionError(f"options.{key}: {where} offers you none.")
        return allowed[0]
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(allowed) if allowed else "none"
        raise OptionError(
            f"options.{key}: {_text(value)} is not offered {where}; allowed: {listed}."
        )
    return value


def _number(key: str, value: Any, r: Range, where: str) -> int:
    if value in (None, ""):
        return r.initial
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip()) if len(value.strip()) < 10 else 10**9
    if number is None:
        raise OptionError(
            f"options.{key}: {_text(value)} is not a whole number; allowed: {r.min} to {r.max}."
        )
    if not r.min <= number <= r.max:
        raise OptionError(
            f"options.{key}: {number} is out of range {where}; allowed: {r.min} to {r.max}."
        )
    return number


def _amount(key: str, value: Any, most: float, unit: str, where: str) -> float:
    """A positive amount up to ``most`` (the flavor's limit); ``most`` when left out."""
    if value in (None, ""):
        return most
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,3})?", value.strip()):
        number = float(value.strip())
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise OptionError(f"options.{key}: {_text(value)} is not a number of {unit}.")
    if not 0 < number <= most:
        raise OptionError(
            f"options.{key}: {number:g} {unit} is more than {where} allows; allowed: above 0 "
            f"up to {most:g}."
        )
    return number


def _kubernetes_options(
    name: str, system: KubernetesSystem, options: dict[str, Any], who: Viewer
) -> dict[str, Any]:
    clean: dict[str, Any] = {"system": name}
    flavors = who.flavors(name, system)
    flavor_name = _choose(
        "flavor", options.get("flavor"), list(flavors), f"on system {name!r}{who.in_vo}"
    )
    flavor = flavors[flavor_name]
    clean["flavor"] = flavor_name
    image = options.get("image")
    if image in (None, ""):
        image = system.images[0].image
    if not isinstance(image, str) or not is_image_reference(image):
        raise OptionError(
            f"options.image: {_text(image)} is not an image reference; allowed: "
            f"registry/path:tag in lower case, at most {MAX_IMAGE} characters."
        )
    if not system.image_allowed(image):
        offered = ", ".join([i.image for i in system.images] + system.image_patterns)
        raise OptionError(
            f"options.image: {_text(image)} is not allowed on system {name!r}; allowed: {offered}."
        )
    clean["image"] = image
    where = f"flavor {flavor_name!r}"
    clean["cpu"] = _amount("cpu", options.get("cpu"), flavor.cpu, "cores", where)
    clean["memory"] = _amount("memory", options.get("memory"), flavor.memory, "GiB", where)
    return clean


def _unicore_options(
    name: str, system: UnicoreSystem, options: dict[str, Any], who: Viewer
) -> dict[str, Any]:
    accounts, projects = who.accounts(name, system)
    if not accounts:
        raise OptionError(
            f"options.system: you have no account on system {name!r}; ask the site's admins "
            "for access or choose another system."
        )
    on = f"to you on system {name!r}"
    clean: dict[str, Any] = {"system": name}
    clean["account"] = _choose("account", options.get("account"), accounts, on)
    if projects or options.get("project") not in (None, ""):
        clean["project"] = _choose("project", options.get("project"), projects, on)
    partitions = who.partitions(name, system)
    partition = _choose(
        "partition", options.get("partition"), list(partitions), f"on system {name!r}{who.in_vo}"
    )
    part = partitions[partition]
    clean["partition"] = partition
    where = f"for partition {partition!r}{who.in_vo}"
    clean["nodes"] = _number("nodes", options.get("nodes"), part.nodes, where)
    clean["runtime"] = _number("runtime", options.get("runtime"), part.runtime, where)
    clean["gpus"] = _number("gpus", options.get("gpus"), part.gpus, where)
    reservation = options.get("reservation")
    if reservation not in (None, ""):
        offered = [r for r, res in system.reservations.items() if partition in res.partitions]
        clean["reservation"] = _choose("reservation", reservation, offered, where)
    return clean


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
        known = isinstance(system_name, str) and system_name in settings.systems
        where = f"offered{who.in_vo}" if known else "a system of this site"
        raise OptionError(
            f"options.system: {str(system_name)[:64]!r} is not {where}; "
            f"allowed: {', '.join(sorted(offered)) or 'none'}."
        )
    system = settings.systems[system_name]
    keys = allowed_keys(system)
    for key in options:
        if key not in keys:
            raise OptionError(
                f"options.{str(key)[:64]}: not an option of system {system_name!r}; "
                f"allowed: {', '.join(keys)}."
            )
    if isinstance(system, UnicoreSystem):
        return system_name, _unicore_options(system_name, system, options, who)
    if isinstance(system, KubernetesSystem):
        return system_name, _kubernetes_options(system_name, system, options, who)
    return system_name, {"system": system_name}
