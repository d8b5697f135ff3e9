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
    listed,
    number_field,
    select_field,
    shown,
    whole_number,
)
from .config import BatchSystem, Partition

B = TypeVar("B", bound=BatchSystem[Any])

NUMBERS = (
    ("nodes", "Nodes", ""),
    ("runtime", "Run time", "minutes"),
    ("gpus", "GPUs per node", ""),
)


def pairs_of(name: str, system: BatchSystem[Any], who: Viewer) -> dict[str, list[str]]:
    """The accounts on ``system``, each with the projects granted together with it:
    the site's grants, then the entitlements'."""
    pairs = system.grants_for(who.identity.user, who.identity.groups)
    for acc, projects in who.grants.pairs.get(name, {}).items():
        mine = pairs.setdefault(acc, [])
        mine.extend(p for p in projects if p not in mine)
    return pairs


def accounts_of(name: str, system: BatchSystem[Any], who: Viewer) -> tuple[list[str], list[str]]:
    """Accounts and projects on ``system`` (each project with some of the accounts)."""
    pairs = pairs_of(name, system, who)
    projects: list[str] = []
    for granted in pairs.values():
        projects.extend(p for p in granted if p not in projects)
    return list(pairs), projects


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
        pairs = pairs_of(name, system, who)
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
            "pairs": pairs,
            "partitions": listed,
            "fields": self.fields(system, pairs, projects, partitions),
        }

    def fields(
        self,
        system: B,
        pairs: dict[str, list[str]],
        projects: list[str],
        partitions: dict[str, Any],
    ) -> list[dict[str, Any]]:
        fields = [
            select_field(
                "account",
                "Account",
                [choice(a) for a in pairs],
                help="the login the job runs as",
            )
        ]
        if projects:
            fields.append(
                select_field(
                    "project",
                    "Project",
                    [
                        choice(p, when={"account": [a for a, ps in pairs.items() if p in ps]})
                        for p in projects
                    ],
                    required=all(pairs.values()),
                    empty_label="none",
                    help="the budget charged",
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
        shown_name = system.display_name or name
        pairs = pairs_of(name, system, who)
        if not pairs:
            raise OptionError(
                "system",
                f"You have no account on system {shown_name}; ask the site's admins for "
                "access or choose another system.",
            )
        on = f"to you on system {shown_name}"
        clean: dict[str, Any] = {"system": name}
        account = choose("account", "Account", options.get("account"), {a: a for a in pairs}, on)
        clean["account"] = account
        granted = pairs[account]
        project = options.get("project")
        if granted or project not in (None, ""):
            if project not in (None, "") and project not in granted:
                _, projects = accounts_of(name, system, who)
                if project in projects:  # granted, but with other accounts
                    choices = listed(granted) if granted else "no project"
                    raise OptionError(
                        "project",
                        f"Project: {shown(project)} is not granted together with account "
                        f"{account} on system {shown_name}; with {account} choose "
                        f"{choices}.",
                    )
            where = f"with account {account} on system {shown_name}"
            clean["project"] = choose("project", "Project", project, {p: p for p in granted}, where)
        partitions = partitions_of(name, system, who)
        partition = choose(
            "partition",
            "Partition",
            options.get("partition"),
            {p: part.display_name or p for p, part in partitions.items()},
            f"on system {shown_name}{who.in_vo}",
        )
        part = partitions[partition]
        clean["partition"] = partition
        where = f"partition {part.display_name or partition}"
        for key, label, unit in NUMBERS:
            r = getattr(part, key)
            clean[key] = whole_number(key, label, options.get(key), r, unit, where, who.in_vo)
        most = who.quota.gpus if who.quota else None
        total = clean["nodes"] * clean["gpus"]
        if most is not None and total > most:
            raise OptionError(
                "gpus",
                f"GPUs per node: {clean['nodes']} nodes with {clean['gpus']} GPUs each are "
                f"{total} GPUs, more than the {most} a lab may have{who.in_vo}; "
                "choose fewer nodes or fewer GPUs per node.",
            )
        reservation = options.get("reservation")
        if reservation not in (None, ""):
            offered = {
                r: system.reservations[r].display_name or r
                for r in reservations_for(system, partition)
            }
            clean["reservation"] = choose(
                "reservation", "Reservation", reservation, offered, f"for {where}{who.in_vo}"
            )
        return clean
