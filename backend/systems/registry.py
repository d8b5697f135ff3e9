"""The registry of system kinds: what the entry-point group ``lablink.systems``
holds.

Lablink registers its own kinds in its ``pyproject.toml``::

    [project.entry-points."lablink.systems"]
    local = "backend.systems.local:KIND"

A site adds a kind from its own distribution the same way; the entry point's
name must be the kind's ``name``. Everything that depends on the set of kinds
is built from here: the site file's model (a union over the kinds' settings),
the driver table, the catalog's and the form's dispatch, the config reference.
"""

from __future__ import annotations

import functools
import logging
import re
from importlib.metadata import entry_points
from typing import Any

from .base import SystemKind, SystemSettings

GROUP = "lablink.systems"
KIND_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")

log = logging.getLogger("lablink.backend.systems")


class KindError(RuntimeError):
    """A registered kind is broken or missing; the message is for the admin."""


@functools.cache
def kinds() -> dict[str, SystemKind[Any]]:
    """Every registered kind by name, in the order of their names."""
    found: dict[str, SystemKind[Any]] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            kind = ep.load()
        except Exception as exc:  # a site's package that cannot be imported
            raise KindError(
                f"the system kind {ep.name!r} ({ep.value}) cannot be loaded: {exc}"
            ) from exc
        if not isinstance(kind, SystemKind):
            raise KindError(f"the entry point {ep.name!r} ({ep.value}) is not a SystemKind")
        if kind.name != ep.name or not KIND_NAME.fullmatch(kind.name):
            raise KindError(
                f"the entry point {ep.name!r} ({ep.value}) names a kind {kind.name!r}: the "
                "names must be equal, lower-case letters, digits and '-'"
            )
        tag = kind.settings.model_fields["kind"].annotation
        if getattr(tag, "__args__", None) != (kind.name,):
            raise KindError(f"the settings of kind {kind.name!r} need kind: Literal[{kind.name!r}]")
        if ep.name in found:
            continue  # the same distribution seen twice on sys.path
        found[ep.name] = kind
    if not found:
        raise KindError(
            f"no system kinds are registered (entry-point group {GROUP}); install Lablink "
            "with pip (make venv) so that its entry points exist"
        )
    return found


def kind_of(system: SystemSettings) -> SystemKind[Any]:
    """The kind of a system of the site file."""
    return kinds()[system.kind]


def settings_models() -> tuple[type[SystemSettings], ...]:
    return tuple(k.settings for k in kinds().values())
