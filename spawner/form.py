"""The options form on the spawn page (pure: catalog in, HTML out).

One select for the system; for each HPC system a group of fields (account,
project, partition, nodes, runtime, GPUs, reservation) named
``<system>.<option>``, shown while that system is selected. The limits in the
form are a convenience: the backend checks every value again.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

HPC_FIELDS = ("account", "project", "partition", "nodes", "runtime", "gpus", "reservation")

_SCRIPT = """
<script>
(function () {
  var select = document.getElementById("lablink-system");
  function show() {
    document.querySelectorAll(".lablink-system-fields").forEach(function (box) {
      var on = box.dataset.system === select.value;
      box.hidden = !on;
      box.querySelectorAll("input, select").forEach(function (el) { el.disabled = !on; });
    });
  }
  function limits(box) {
    var part = box.querySelector("select[data-role=partition]");
    if (!part) { return; }
    var info = JSON.parse(part.selectedOptions[0].dataset.limits);
    ["nodes", "runtime", "gpus"].forEach(function (key) {
      var input = box.querySelector("input[data-role=" + key + "]");
      input.min = info[key].min; input.max = info[key].max; input.value = info[key].default;
      input.closest(".form-group").hidden = info[key].max === 0;
    });
    var res = box.querySelector("select[data-role=reservation]");
    res.querySelectorAll("option[data-partitions]").forEach(function (opt) {
      opt.hidden = opt.dataset.partitions.split(" ").indexOf(part.value) < 0;
    });
    res.value = "";
  }
  select.addEventListener("change", show);
  document.querySelectorAll("select[data-role=partition]").forEach(function (part) {
    var box = part.closest(".lablink-system-fields");
    part.addEventListener("change", function () { limits(box); });
    limits(box);
  });
  show();
})();
</script>
"""


def _select(system: str, role: str, label: str, options: list[str], extra: str = "") -> str:
    field = f"{system}.{role}"
    ident = f"lablink-{system}-{role}"
    rows = "".join(f'<option value="{escape(o)}">{escape(o)}</option>' for o in options)
    return (
        f'<div class="form-group"><label for="{escape(ident)}">{label}</label>'
        f'<select class="form-control" id="{escape(ident)}" name="{escape(field)}" '
        f'data-role="{role}"{extra}>{rows}</select></div>'
    )


def _number(system: str, role: str, label: str, limits: dict[str, int]) -> str:
    field = f"{system}.{role}"
    ident = f"lablink-{system}-{role}"
    return (
        f'<div class="form-group"><label for="{escape(ident)}">{label}</label>'
        f'<input class="form-control" type="number" id="{escape(ident)}" name="{escape(field)}" '
        f'data-role="{role}" min="{limits["min"]}" max="{limits["max"]}" '
        f'value="{limits["default"]}"></div>'
    )


def _hpc_fields(system: dict[str, Any]) -> str:
    name = system["name"]
    partitions = system.get("partitions") or []
    parts = []
    parts.append(_select(name, "account", "Account", system.get("accounts", [])))
    if system.get("projects"):
        parts.append(_select(name, "project", "Project", system["projects"]))
    rows = []
    for p in partitions:
        limits = {k: p[k] for k in ("nodes", "runtime", "gpus")}
        label = p.get("display_name") or p["name"]
        if p.get("interactive"):
            label += " (login node)"
        rows.append(
            f'<option value="{escape(p["name"])}" '
            f"data-limits='{escape(json.dumps(limits))}'>{escape(label)}</option>"
        )
    ident = f"lablink-{name}-partition"
    parts.append(
        f'<div class="form-group"><label for="{escape(ident)}">Partition</label>'
        f'<select class="form-control" id="{escape(ident)}" name="{escape(name)}.partition" '
        f'data-role="partition">{"".join(rows)}</select></div>'
    )
    first = partitions[0] if partitions else None
    for role, label in (("nodes", "Nodes"), ("runtime", "Runtime (minutes)"), ("gpus", "GPUs")):
        limits = first[role] if first else {"min": 0, "max": 0, "default": 0}
        parts.append(_number(name, role, label, limits))
    res_rows = ['<option value="">none</option>']
    for p in partitions:
        for r in p.get("reservations", []):
            res_rows.append(
                f'<option value="{escape(r)}" data-partitions="{escape(p["name"])}">'
                f"{escape(r)}</option>"
            )
    ident = f"lablink-{name}-reservation"
    parts.append(
        f'<div class="form-group"><label for="{escape(ident)}">Reservation</label>'
        f'<select class="form-control" id="{escape(ident)}" name="{escape(name)}.reservation" '
        f'data-role="reservation">{"".join(res_rows)}</select></div>'
    )
    return (
        f'<fieldset class="lablink-system-fields" data-system="{escape(name)}">'
        + "".join(parts)
        + "</fieldset>"
    )


def options_form_html(catalog: dict[str, Any] | None) -> str:
    if not catalog or not catalog.get("systems"):
        return (
            "<p class='lablink-unavailable'>The list of systems cannot be loaded right now. "
            "Start uses the site's default system; if that fails, try again in a minute.</p>"
        )
    names = [s["name"] for s in catalog["systems"]]
    default = catalog.get("default_system")
    if default not in names:
        default = names[0]
    rows = []
    fields = []
    for system in catalog["systems"]:
        name = escape(system["name"])
        label = escape(system.get("display_name") or system["name"])
        desc = system.get("description") or ""
        text = f"{label} — {escape(desc)}" if desc else label
        selected = " selected" if system["name"] == default else ""
        rows.append(f'<option value="{name}"{selected}>{text}</option>')
        if system.get("kind") == "unicore":
            fields.append(_hpc_fields(system))
    return (
        '<div class="form-group">'
        '<label for="lablink-system">System</label>'
        '<select class="form-control" id="lablink-system" name="system">'
        + "".join(rows)
        + "</select></div>"
        + "".join(fields)
        + (_SCRIPT if fields else "")
    )


def options_from_form(formdata: dict[str, list[str]]) -> dict[str, Any]:
    """The chosen system and its fields (``<system>.<option>``) as start options."""
    options: dict[str, Any] = {}
    system = (formdata.get("system") or [""])[0].strip()
    if not system:
        return options
    options["system"] = system
    for key in HPC_FIELDS:
        values = formdata.get(f"{system}.{key}")
        if values and values[0].strip():
            options[key] = values[0].strip()
    return options
