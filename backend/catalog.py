"""What a user may start, and the check of a start request's options (pure).

The hub's form is a convenience; this is where options are decided. Every
refusal names the field and what is allowed, in one sentence.
"""

from __future__ import annotations

import re
from typing import Any

from .cloud.config import MAX_IMAGE, Flavor, KubernetesSystem, is_image_reference
from .settings import LocalSystem, Settings
from .unicore.config import Partition, Range, UnicoreSystem

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


def system_entry(
    name: str, system: AnySystem, user: str, groups: frozenset[str]
) -> dict[str, Any] | None:
    """The catalog entry of one system for this person; None if it is not theirs."""
    entry: dict[str, Any] = {
        "name": name,
        "kind": system.kind,
        "display_name": system.display_name or name,
        "description": system.description,
    }
    if isinstance(system, UnicoreSystem):
        accounts, projects = system.grants_for(user, groups)
        if not accounts:
            return None
        entry["accounts"] = accounts
        entry["projects"] = projects
        entry["partitions"] = [
            _partition_entry(system, p, part) for p, part in system.partitions.items()
        ]
    if isinstance(system, KubernetesSystem):
        entry["flavors"] = [_flavor_entry(f, flavor) for f, flavor in system.flavors.items()]
        entry["images"] = [
            {"image": i.image, "display_name": i.display_name or i.image,
             "description": i.description}
            for i in system.images
        ]  # fmt: skip
        entry["image_patterns"] = system.image_patterns
    return entry


def catalog(settings: Settings, user: str, groups: frozenset[str] = frozenset()) -> dict[str, Any]:
    systems = []
    for name, system in settings.systems.items():
        entry = system_entry(name, system, user, groups)
        if entry is not None:
            systems.append(entry)
    return {
        "site_name": settings.site_name,
        "default_system": settings.default_system,
        "systems": systems,
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
    name: str, system: KubernetesSystem, options: dict[str, Any]
) -> dict[str, Any]:
    clean: dict[str, Any] = {"system": name}
    flavor_name = _choose(
        "flavor", options.get("flavor"), system.flavor_names(), f"on system {name!r}"
    )
    flavor = system.flavors[flavor_name]
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
    name: str, system: UnicoreSystem, options: dict[str, Any], user: str, groups: frozenset[str]
) -> dict[str, Any]:
    accounts, projects = system.grants_for(user, groups)
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
    partition = _choose(
        "partition", options.get("partition"), list(system.partitions), f"on system {name!r}"
    )
    part = system.partitions[partition]
    clean["partition"] = partition
    where = f"for partition {partition!r}"
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
) -> tuple[str, dict[str, Any]]:
    """Return the system name and the normalized options, or raise OptionError."""
    system_name = options.get("system", None)
    if system_name in (None, ""):
        system_name = settings.default_system
    if not isinstance(system_name, str) or system_name not in settings.systems:
        allowed = ", ".join(sorted(settings.systems))
        raise OptionError(
            f"options.system: {str(system_name)[:64]!r} is not a system of this site; "
            f"allowed: {allowed}."
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
        return system_name, _unicore_options(system_name, system, options, user, groups)
    if isinstance(system, KubernetesSystem):
        return system_name, _kubernetes_options(system_name, system, options)
    return system_name, {"system": system_name}
