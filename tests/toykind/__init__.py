"""A toy system kind, registered from the test tree as a site would register its own:
one package and one entry point (tests/test_kinds.py writes the entry point).

Kind ``toy``: labs are processes on this machine, like ``local``, and the person
picks a colour, which the lab gets as ``TOY_COLOUR``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from backend.systems.base import SystemKind, Viewer, choice, choose, select_field
from backend.systems.driver import LabContext
from backend.systems.local.config import LocalSystem
from backend.systems.local.driver import LocalDriver


class ToySystem(LocalSystem):
    """A machine whose labs come in colours."""

    kind: Literal["toy"] = Field(description="'toy': a lab is a process in a colour")  # type: ignore[assignment]
    colours: list[str] = Field(min_length=1, description="the colours a person may pick")


class ToyDriver(LocalDriver):
    async def start(self, ctx: LabContext[Any]) -> str:
        ctx.env = {**ctx.env, "TOY_COLOUR": ctx.options["colour"]}
        return await super().start(ctx)


class ToyKind(SystemKind[ToySystem]):
    name: ClassVar[str] = "toy"
    summary: ClassVar[str] = "a lab is a process in a colour the person picks"
    settings = ToySystem
    driver = ToyDriver
    option_keys: ClassVar[tuple[str, ...]] = ("system", "colour")

    def entry(self, name: str, system: ToySystem, who: Viewer) -> dict[str, Any] | None:
        choices = [choice(c, c.title()) for c in system.colours]
        return {"colours": system.colours, "fields": [select_field("colour", "Colour", choices)]}

    def check(
        self, name: str, system: ToySystem, options: dict[str, Any], who: Viewer
    ) -> dict[str, Any]:
        colours = {c: c.title() for c in system.colours}
        where = f"on system {system.display_name or name}"
        colour = choose("colour", "Colour", options.get("colour"), colours, where)
        return {"system": name, "colour": colour}


KIND = ToyKind()
