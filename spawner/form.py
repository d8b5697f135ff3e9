"""The options form on the spawn page (pure: catalog in, HTML out)."""

from __future__ import annotations

from html import escape
from typing import Any


def options_form_html(catalog: dict[str, Any] | None) -> str:
    if not catalog or not catalog.get("systems"):
        return (
            "<p class='lablink-unavailable'>The list of systems cannot be loaded right now. "
            "Start uses the site's default system; if that fails, try again in a minute.</p>"
        )
    default = catalog.get("default_system")
    rows = []
    for system in catalog["systems"]:
        name = escape(system["name"])
        label = escape(system.get("display_name") or system["name"])
        desc = system.get("description") or ""
        text = f"{label} — {escape(desc)}" if desc else label
        selected = " selected" if system["name"] == default else ""
        rows.append(f'<option value="{name}"{selected}>{text}</option>')
    return (
        '<div class="form-group">'
        '<label for="lablink-system">System</label>'
        '<select class="form-control" id="lablink-system" name="system">'
        + "".join(rows)
        + "</select></div>"
    )
