"""What every system kind has: its settings' common part, the kind's contract
with the catalog and the form, whom a catalog is for, and the checks of start
options (pure: no I/O).

A kind is a package (``backend/systems/<kind>/``) that exports one
:class:`SystemKind` object, registered in the entry-point group
``lablink.systems`` (see :mod:`backend.systems.registry`). The kind owns:

- its settings model (a :class:`SystemSettings` with ``kind: Literal["<kind>"]``),
- what a person may choose on such a system and how the form asks for it
  (:meth:`SystemKind.entry`, with ``fields`` as described in docs/reference.md),
- the check of a start request's options (:meth:`SystemKind.check`),
- its driver (:class:`backend.systems.driver.Driver`).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import Field, model_validator

from ..config_base import Strict
from ..vos import Grants, Identity, Quota, VOSettings

if TYPE_CHECKING:
    from .driver import Driver

# -- settings -------------------------------------------------------------------------


class SecretMissing(Exception):
    """A system's secret is not where its settings say; ``key`` is the setting's
    dotted path below the system, the message is for the admin."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


# JupyterLab's arguments that keep a lab quiet: no news feed fetched, no check for a
# newer JupyterLab (a lab on a compute node has no internet and its people cannot
# upgrade it); every kind's default lab arguments. The question "official Jupyter
# news?" depends on a setting only: Lablink's settings override (installed with it,
# share/jupyter/lab/settings/overrides.d/lablink.json) answers it in the lab's
# environment.
QUIET_LAB_ARGS = (
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
)


class SystemSettings(Strict):
    """The part of ``systems.<name>`` every kind has."""

    kind: str = Field(description="the kind of system: which of Lablink's packages runs its labs")
    display_name: str = Field(default="", description="the name people see in the form")
    description: str = Field(default="", description="one line shown beside the name")

    def peers(self) -> frozenset[str]:
        """The services the backend needs for this system's labs: ``tunnel`` (the SSH
        tunnel service), ``userlab_manager``."""
        return frozenset()

    def secret(self, environ: Mapping[str, str]) -> str | None:
        """The system's own secret (a password, a signing key), read once at start;
        None when it has none. Raises SecretMissing."""
        return None

    def vo_choices(self) -> dict[str, list[str]]:
        """What a VO may restrict on this system, per key of the VO's settings
        (``partitions``, ``flavors``): the names it may choose from."""
        return {}

    def choice(self, options: Mapping[str, Any]) -> str:
        """The partition or flavor a lab's (validated) ``options`` chose, as the site file
        names it ('' for a kind without one): the metrics' ``choice`` label."""
        return ""

    def peer(self) -> tuple[str, str] | None:
        """The remote service this system's labs are driven through, as (the metrics'
        ``peer`` name, its URL); None: none of its own (a local lab, or the UserLab
        Manager, which the backend knows apart)."""
        return None

    def choice_name(self, options: Mapping[str, Any]) -> str | None:
        """The display name of the partition or flavor a lab's (validated) ``options``
        chose, for the list of a person's labs; None: the kind has no such choice."""
        return None

    def runtime(self, options: Mapping[str, Any]) -> int | None:
        """The lab's wall time in minutes from its (validated) ``options``; None: it
        runs until it is stopped."""
        return None

    def start_limit(self) -> float:
        """Seconds a start of a lab may take at most, from the request to a lab that
        answers, queue included (the hub waits this long)."""
        return 300.0

    def shared_by_everybody(self) -> tuple[str, str] | None:
        """(key, sentence) when this system puts every person's labs in one account, so
        that a person could read another's work or the service's secrets: allowed only
        with the demo login (``login: demo``). None for a system that keeps people apart."""
        return None


class Range(Strict):
    """Whole numbers a person may choose, with the value the form starts at."""

    min: int = Field(default=1, ge=0, description="smallest value allowed")
    max: int = Field(default=1, ge=0, description="largest value allowed")
    default: int | None = Field(default=None, description="the form's value; unset: `min`")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        if self.default is not None and not self.min <= self.default <= self.max:
            raise ValueError(f"default ({self.default}) must lie between min and max")
        return self

    @property
    def initial(self) -> int:
        return self.min if self.default is None else self.default

    def cut(self, most: int | None) -> Range | None:
        """This range with its maximum lowered to ``most``; None if even its minimum is
        above it."""
        if most is None or self.max <= most:
            return self
        if self.min > most:
            return None
        return Range(min=self.min, max=most, default=min(self.initial, most))

    def limits(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max, "default": self.initial}


# -- whom a catalog is for -------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """Whom the catalog is for: the person, what their entitlements give, their VO."""

    identity: Identity
    grants: Grants
    vo_name: str | None = None
    vo: VOSettings | None = None

    @property
    def in_vo(self) -> str:
        """ " in VO <display name>" for sentences, or nothing."""
        if not self.vo_name:
            return ""
        return f" in VO {(self.vo.display_name if self.vo else '') or self.vo_name}"

    @property
    def quota(self) -> Quota | None:
        return self.vo.quota if self.vo is not None else None

    def allows_system(self, system: str) -> bool:
        return self.vo is None or self.vo.allows_system(system)

    def allows(self, key: str, system: str, choice: str) -> bool:
        """Whether the VO lets this person choose ``choice`` of ``key`` (a key of
        ``vo_choices``: ``partitions``, ``flavors``) on ``system``."""
        return self.vo is None or self.vo.allows(key, system, choice)


class OptionError(ValueError):
    """A start option is not acceptable: ``sentence`` for the person (the field's
    label, display names, what is allowed), ``field`` the option's key for programs."""

    def __init__(self, field: str, sentence: str):
        super().__init__(sentence)
        self.field = field
        self.sentence = sentence


# -- the kind ---------------------------------------------------------------------------

S = TypeVar("S", bound=SystemSettings)


class SystemKind(abc.ABC, Generic[S]):
    """One kind of system. Subclass it in the kind's package and export an instance
    for the entry point."""

    name: ClassVar[str]
    """the value of ``kind:`` in the site file (lower-case letters, digits, '-')"""
    summary: ClassVar[str]
    """one line for the config reference: what a lab is on such a system"""
    settings: ClassVar[type[SystemSettings]]
    driver: ClassVar[type[Driver[Any]]]
    option_keys: ClassVar[tuple[str, ...]]
    """the option keys a start request may have for such a system (``system`` too)"""

    @abc.abstractmethod
    def entry(self, name: str, system: S, who: Viewer) -> dict[str, Any] | None:
        """The kind's part of ``name``'s catalog entry for ``who``: what they may
        choose, and ``fields``, how the form asks for it (see docs/reference.md).
        None when the system offers this person nothing (no account, no partition
        their VO allows)."""

    @abc.abstractmethod
    def check(self, name: str, system: S, options: dict[str, Any], who: Viewer) -> dict[str, Any]:
        """The options as the driver gets them: every key known, every value allowed
        for ``who`` and filled in where the request left it out. Raises OptionError.
        ``options`` has only keys of ``option_keys``."""


# -- the checks of option values (each raises OptionError with one sentence) ----------


def shown(value: Any) -> str:
    """A value a person sent, cut short for a sentence."""
    return repr(value)[:64] if isinstance(value, str) else str(value)[:64]


def listed(names: list[str], last: str = "or") -> str:
    """'a', 'a or b', 'a, b or c'."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} {last} {names[-1]}"


def span(low: float, high: float, unit: str = "") -> str:
    """'10 to 240 minutes', or '1' when there is one value."""
    values = f"{low:g}" if low == high else f"{low:g} to {high:g}"
    return f"{values} {unit}" if unit else values


def choose(
    key: str,
    label: str,
    value: Any,
    allowed: dict[str, str],
    where: str,
) -> str:
    """One of ``allowed`` (value: display name); the first when the request leaves it
    out. ``where`` says whose choices they are ("on system HPC in VO Demo")."""
    if value in (None, ""):
        if not allowed:
            raise OptionError(key, f"{label}: there is none for you {where}.")
        return next(iter(allowed))
    if not isinstance(value, str) or value not in allowed:
        if not allowed:
            raise OptionError(
                key, f"{label}: {shown(value)} is not offered {where}; leave it empty."
            )
        raise OptionError(
            key,
            f"{label}: {shown(value)} is not offered {where}; "
            f"choose {listed(list(allowed.values()))}.",
        )
    return value


def whole_number(
    key: str, label: str, value: Any, r: Range, unit: str, where: str, scope: str = ""
) -> int:
    """A whole number within ``r``; its default when the request leaves it out.
    ``where`` names what sets the range ("partition Batch"), ``scope`` whose limits
    cut it (" in VO Demo")."""
    if value in (None, ""):
        return r.initial
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip()) if len(value.strip()) < 10 else 10**9
    if number is None:
        raise OptionError(
            key,
            f"{label}: {shown(value)} is not a whole number; choose {span(r.min, r.max, unit)}.",
        )
    if not r.min <= number <= r.max:
        which = "more" if number > r.max else "less"
        raise OptionError(
            key,
            f"{label}: {span(number, number, unit)} is {which} than {where} allows{scope}; "
            f"choose {span(r.min, r.max, unit)}.",
        )
    return number


def amount(key: str, label: str, value: Any, most: float, unit: str, where: str) -> float:
    """A positive amount up to ``most``; ``most`` when the request leaves it out."""
    if value in (None, ""):
        return most
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,3})?", value.strip()):
        number = float(value.strip())
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise OptionError(key, f"{label}: {shown(value)} is not a number of {unit}.")
    if not 0 < number <= most:
        which = f"is more than {where} allows" if number > most else "is not more than 0"
        raise OptionError(
            key,
            f"{label}: {number:g} {unit} {which}; choose more than 0 and up to {most:g} {unit}.",
        )
    return number


# -- how the form asks (the ``fields`` of a catalog entry) -----------------------------


def choice(
    value: str,
    label: str = "",
    description: str = "",
    *,
    sets: dict[str, dict[str, Any]] | None = None,
    when: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """One choice of a select field. ``sets``: what choosing it does to other fields
    of the system (``{"runtime": {"min": 10, "max": 60, "default": 30}}``); ``when``:
    it is offered only while other fields have one of these values."""
    out: dict[str, Any] = {"value": value, "label": label or value, "description": description}
    if sets:
        out["sets"] = sets
    if when:
        out["when"] = when
    return out


def select_field(
    key: str,
    label: str,
    choices: list[dict[str, Any]],
    *,
    required: bool = True,
    empty_label: str = "none",
    other: dict[str, Any] | None = None,
    help: str = "",
) -> dict[str, Any]:
    """A field with a list of choices. Not ``required``: an empty choice first,
    labelled ``empty_label``. ``other``: a free text a person may type instead
    (``{"label", "placeholder", "maxlength"}``)."""
    out: dict[str, Any] = {
        "key": key,
        "label": label,
        "type": "select",
        "required": required,
        "choices": choices,
        "help": help,
    }
    if not required:
        out["empty_label"] = empty_label
    if other:
        out["other"] = other
    return out


def number_field(
    key: str,
    label: str,
    *,
    minimum: float,
    maximum: float,
    default: float | None,
    step: float = 1,
    unit: str = "",
    help: str = "",
) -> dict[str, Any]:
    """A number field; ``default`` None leaves it empty (the backend fills it in)."""
    return {
        "key": key,
        "label": label,
        "type": "number",
        "min": minimum,
        "max": maximum,
        "default": default,
        "step": step,
        "unit": unit,
        "help": help,
    }
