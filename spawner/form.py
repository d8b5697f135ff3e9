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

from backend.systems.base import span

TEMPLATES = Path(__file__).with_name("templates")
FORM_TEMPLATE = "lablink_form.html"
FIELD_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")

UNAVAILABLE = (
    "<p class='lablink-unavailable'>The list of systems cannot be loaded right now. "
    "Start uses the site's default system; if that fails, try again in a minute.</p>"
)


def environment(paths: Sequence[str] = ()) -> jinja2.Environment:
    """Templates from ``paths`` first (a site's own), then Lablink's."""
    loader = jinja2.FileSystemLoader([*paths, str(TEMPLATES)])
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.ChainableUndefined)


def full_sentence(vo: dict[str, Any] | None) -> str:
    """Why nothing can be started in the VO now, or "" when a lab may start."""
    if vo is None:
        return ""
    quota, name = vo["quota"], vo["display_name"]
    labs, mine = quota["labs"], quota["labs_per_user"]
    if mine["limit"] is not None and mine["used"] >= mine["limit"]:
        return (
            f"You have {mine['used']} active labs in VO {name}, its limit per person; "
            "stop one of them on Home to start another."
        )
    if labs["limit"] is not None and labs["used"] >= labs["limit"]:
        return (
            f"All {labs['limit']} labs of VO {name} are in use; you can start one "
            "when another has stopped."
        )
    return ""


def prepared(system: dict[str, Any], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """The system's fields as the template shows them: the value chosen (the person's
    choice when the form is shown again, else the catalog's), whether the field is
    fixed (one value: shown as text), a typed value for ``other``."""
    out = []
    for f in system.get("fields") or []:
        f = dict(f)
        value = chosen.get(f["key"])
        f["other_value"] = ""
        if f["type"] == "select":
            values = [c["value"] for c in f["choices"]]
            if value not in (None, "") and str(value) not in values and f.get("other"):
                f["other_value"], value = str(value), None
            f["value"] = str(value) if value not in (None, "") else ""
            f["fixed"] = (
                f.get("required", True)
                and len(values) == 1
                and not f.get("other")
                and not any(c.get("when") for c in f["choices"])
            )
        else:
            f["value"] = value if value not in (None, "") else f.get("default")
            f["fixed"] = f["min"] == f["max"]
            f["range"] = span(f["min"], f["max"], f.get("unit", ""))
        out.append(f)
    return out


def options_form_html(
    catalog: dict[str, Any] | None,
    template_paths: Sequence[str] = (),
    *,
    chosen: dict[str, Any] | None = None,
    error_field: str = "",
    user: str = "",
) -> str:
    """The form for this catalog (the person's systems in their active VO); ``chosen``
    the options to show chosen (a refused start's, or the last start's), with
    ``error_field`` the one a refusal was about; ``user`` the hub user, whose last
    choices per system the browser remembers."""
    if not catalog:
        return UNAVAILABLE
    chosen = dict(chosen or {})
    vo = next((v for v in catalog.get("vos") or [] if v.get("active")), None)
    systems = catalog.get("systems") or []
    names = [s["name"] for s in systems]
    default = chosen.get("system") if chosen.get("system") in names else None
    default = default or catalog.get("default_system")
    if default not in names and names:
        default = names[0]
    fields = {s["name"]: prepared(s, chosen if s["name"] == default else {}) for s in systems}
    template = environment(template_paths).get_template(FORM_TEMPLATE)
    return template.render(
        vo=vo,
        full=full_sentence(vo),
        systems=systems,
        fields=fields,
        default=default,
        restored=default if chosen.get("system") else "",
        error_field=error_field,
        user=user,
    )


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
