"""The options form on the spawn page: the backend's catalog rendered with a Jinja
template (``templates/lablink_form.html``), and the form's answer turned back
into start options.

The catalog says, per system, which ``fields`` the form has (select or number,
choices, limits, what one choice does to other fields); the template renders
them without knowing any kind of system, so a new kind shows its fields with
no spawner code. Every field is named ``<system>.<key>`` (and a free text
typed instead of a choice ``<system>.<key>.other``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).with_name("templates")
FORM_TEMPLATE = "lablink_form.html"
FIELD_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")

UNAVAILABLE = (
    "<p class='lablink-unavailable'>The list of systems cannot be loaded right now. "
    "Start uses the site's default system; if that fails, try again in a minute.</p>"
)

PER_LAB = (
    ("nodes", "{} nodes"),
    ("gpus", "{} GPUs"),
    ("runtime", "{} minutes"),
    ("cpu", "{:g} CPU cores"),
    ("memory", "{:g} GiB memory"),
)


def environment(paths: Sequence[str] = ()) -> jinja2.Environment:
    """Templates from ``paths`` first (a site's own), then Lablink's."""
    loader = jinja2.FileSystemLoader([*paths, str(TEMPLATES)])
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.ChainableUndefined)


def options_form_html(catalog: dict[str, Any] | None, template_paths: Sequence[str] = ()) -> str:
    """The form for this catalog (the person's systems in their active VO)."""
    if not catalog:
        return UNAVAILABLE
    vo = next((v for v in catalog.get("vos") or [] if v.get("active")), None)
    per_lab = []
    if vo is not None:
        most = vo["quota"]["per_lab"]
        per_lab = [fmt.format(most[k]) for k, fmt in PER_LAB if most.get(k) is not None]
    systems = catalog.get("systems") or []
    names = [s["name"] for s in systems]
    default = catalog.get("default_system")
    if default not in names and names:
        default = names[0]
    template = environment(template_paths).get_template(FORM_TEMPLATE)
    return template.render(vo=vo, per_lab=per_lab, systems=systems, default=default)


def options_from_form(formdata: dict[str, list[str]]) -> dict[str, Any]:
    """The chosen system and its fields (``<system>.<key>``) as start options; a text
    typed into ``<system>.<key>.other`` replaces the choice of ``key``. Which keys a
    system has is the backend's to check."""
    options: dict[str, Any] = {}
    vo = (formdata.get("vo") or [""])[0].strip()
    if vo:
        options["vo"] = vo  # the spawner sends it as the request's VO, not as an option
    system = (formdata.get("system") or [""])[0].strip()
    if not system:
        return options
    options["system"] = system
    prefix = f"{system}."
    typed: dict[str, str] = {}
    for name, values in formdata.items():
        if not name.startswith(prefix) or not values:
            continue
        key, other = name[len(prefix) :], False
        if key.endswith(".other"):
            key, other = key.removesuffix(".other"), True
        value = values[0].strip()
        if not value or not FIELD_KEY.fullmatch(key) or key in ("system", "vo"):
            continue
        if other:
            typed[key] = value
        else:
            options[key] = value
    options.update(typed)
    return options
