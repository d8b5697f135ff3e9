"""What a user may start, and the check of a start request's options (pure).

The hub's form is a convenience; this is where options are decided. Every
refusal names the field and what is allowed, in one sentence.
"""

from __future__ import annotations

from typing import Any

from .settings import LocalSystem, Settings


class OptionError(ValueError):
    """A start option is not acceptable; the message is for the person."""


def system_entry(name: str, system: LocalSystem) -> dict[str, Any]:
    return {
        "name": name,
        "kind": system.kind,
        "display_name": system.display_name or name,
        "description": system.description,
        "options": {},
    }


def catalog(settings: Settings) -> dict[str, Any]:
    return {
        "site_name": settings.site_name,
        "default_system": settings.default_system,
        "systems": [system_entry(n, s) for n, s in settings.systems.items()],
    }


def allowed_keys(system: LocalSystem) -> tuple[str, ...]:
    return ("system",)


def validate_options(settings: Settings, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
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
    return system_name, {"system": system_name}
