"""What a person may choose on a batch system, how the form asks for it, and the
check of their choice (pure).

A person's accounts and projects come from the system's ``access`` grants and
from their entitlements; the partitions are those their VO allows, with the
ranges cut to the VO's per-lab maxima.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from ..base import (
    OptionError,
    SystemKind,
    Viewer,
    choice,
    choose,
    number_field,
    select_field,
    whole_number,
)
from .config import BatchSystem, Partition

B = TypeVar("B", bound=BatchSystem[Any])

NUMBERS = (
    ("nodes", "Nodes", ""),
    ("runtime", "Run time", "minutes"),
    ("gpus", "GPUs per node", ""),
)


def accounts_of(name: str, system: BatchSystem[Any], who: Viewer) -> tuple[list[str], list[str]]:
    """Accounts and projects on ``system``: the site's grants, then the entitlements'."""
    accounts, projects = system.grants_for(who.identity.user, who.identity.groups)
    for acc in who.grants.accounts.get(name, []):
        if acc not in accounts:
            accounts.append(acc)
    for proj in who.grants.projects.get(name, []):
        if proj not in projects:
            projects.append(proj)
    return accounts, projects


def partitions_of(name: str, system: B, who: Viewer) -> dict[str, Any]:
    """The partitions the VO lets this person use, their ranges cut to its maxima
    (one whose smallest lab is more than the VO allows is left out)."""
    quota = who.quota
    out: dict[str, Any] = {}
    for pname, part in system.partitions.items():
        if not who.allows("partitions", name, pname):
            continue
        nodes = part.nodes.cut(quota.nodes if quota else None)
        runtime = part.runtime.cut(quota.runtime if quota else None)
        gpus = part.gpus.cut(quota.gpus if quota else None)
        if nodes is None or runtime is None or gpus is None:
            continue
        out[pname] = part.model_copy(update={"nodes": nodes, "runtime": runtime, "gpus": gpus})
    return out


def reservations_for(system: BatchSystem[Any], partition: str) -> list[str]:
    return [r for r, res in system.reservations.items() if partition in res.partitions]


class BatchKind(SystemKind[B]):
    """The catalog and option check every batch kind shares."""

    option_keys: ClassVar[tuple[str, ...]] = (
        "system",
        "account",
        "project",
        "partition",
        "nodes",
        "runtime",
        "gpus",
        "reservation",
    )

    def partition_label(self, name: str, part: Partition) -> str:
        """How the form names a partition."""
        return part.display_name or name

    def partition_extra(self, part: Any) -> dict[str, Any]:
        """More of a partition's catalog entry, for a kind whose partitions have more."""
        return {}

    def entry(self, name: str, system: B, who: Viewer) -> dict[str, Any] | None:
        accounts, projects = accounts_of(name, system, who)
        partitions = partitions_of(name, system, who)
        if not accounts or not partitions:
            return None
        listed = []
        for pname, part in partitions.items():
            listed.append(
                {
                    "name": pname,
                    "display_name": part.display_name or pname,
                    "description": part.description,
                    **self.partition_extra(part),
                    "nodes": part.nodes.limits(),
                    "runtime": part.runtime.limits(),
                    "gpus": part.gpus.limits(),
                    "reservations": reservations_for(system, pname),
                }
            )
        return {
            "accounts": accounts,
            "projects": projects,
            "partitions": listed,
            "fields": self.fields(system, accounts, projects, partitions),
        }

    def fields(
        self,
        system: B,
        accounts: list[str],
        projects: list[str],
        partitions: dict[str, Any],
    ) -> list[dict[str, Any]]:
        fields = [
            select_field(
                "account",
                "Account",
                [choice(a) for a in accounts],
                help="the login the job runs as",
            )
        ]
        if projects:
            fields.append(
                select_field(
                    "project", "Project", [choice(p) for p in projects], help="the budget charged"
                )
            )
        fields.append(
            select_field(
                "partition",
                "Partition",
                [
                    choice(
                        pname,
                        self.partition_label(pname, part),
                        part.description,
                        sets={key: getattr(part, key).limits() for key, _, _ in NUMBERS},
                    )
                    for pname, part in partitions.items()
                ],
            )
        )
        first = next(iter(partitions.values()))
        for key, label, unit in NUMBERS:
            r = getattr(first, key)
            fields.append(
                number_field(key, label, minimum=r.min, maximum=r.max, default=r.initial, unit=unit)
            )
        offered = [
            choice(r, res.display_name or r, when={"partition": [p for p in res.partitions]})
            for r, res in system.reservations.items()
            if any(p in partitions for p in res.partitions)
        ]
        if offered:
            fields.append(select_field("reservation", "Reservation", offered, required=False))
        return fields

    def check(self, name: str, system: B, options: dict[str, Any], who: Viewer) -> dict[str, Any]:
        accounts, projects = accounts_of(name, system, who)
        if not accounts:
            raise OptionError(
                f"options.system: you have no account on system {name!r}; ask the site's "
                "admins for access or choose another system."
            )
        on = f"to you on system {name!r}"
        clean: dict[str, Any] = {"system": name}
        clean["account"] = choose("account", options.get("account"), accounts, on)
        if projects or options.get("project") not in (None, ""):
            clean["project"] = choose("project", options.get("project"), projects, on)
        partitions = partitions_of(name, system, who)
        partition = choose(
            "partition",
            options.get("partition"),
            list(partitions),
            f"on system {name!r}{who.in_vo}",
        )
        part = partitions[partition]
        clean["partition"] = partition
        where = f"for partition {partition!r}{who.in_vo}"
        for key, _, _ in NUMBERS:
            clean[key] = whole_number(key, options.get(key), getattr(part, key), where)
        most = who.quota.gpus if who.quota else None
        total = clean["nodes"] * clean["gpus"]
        if most is not None and total > most:
            raise OptionError(
                f"options.gpus: {clean['nodes']} nodes with {clean['gpus']} GPUs each are "
                f"{total} GPUs, more than the {most} a lab may have{who.in_vo}; "
                "choose fewer nodes or fewer GPUs per node."
            )
        reservation = options.get("reservation")
        if reservation not in (None, ""):
            offered = reservations_for(system, partition)
            clean["reservation"] = choose("reservation", reservation, offered, where)
        return clean
