"""The options form on the spawn page (pure: catalog in, HTML out).

One select for the system; for each HPC system a group of fields (account,
project, partition, nodes, runtime, GPUs, reservation), for each cloud system
one with flavor, image (and a free field where the site allows image
patterns), CPU and memory, all named ``<system>.<option>`` and shown while
that system is selected. The limits in the
form are a convenience: the backend checks every value again.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

HPC_FIELDS = ("account", "project", "partition", "nodes", "runtime", "gpus", "reservation")
CLOUD_FIELDS = ("flavor", "image", "cpu", "memory")

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
  function flavor(box) {
    var choice = box.querySelector("select[data-role=flavor]");
    if (!choice) { return; }
    var info = JSON.parse(choice.selectedOptions[0].dataset.limits);
    ["cpu", "memory"].forEach(function (key) {
      var input = box.querySelector("input[data-role=" + key + "]");
      input.max = info[key]; input.placeholder = "up to " + info[key];
      if (input.value && Number(input.value) > info[key]) { input.value = ""; }
    });
  }
  select.addEventListener("change", show);
  document.querySelectorAll("select[data-role=flavor]").forEach(function (choice) {
    var box = choice.closest(".lablink-system-fields");
    choice.addEventListener("change", function () { flavor(box); });
    flavor(box);
  });
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


def _amount(system: str, role: str, label: str, most: float) -> str:
    field = f"{system}.{role}"
    ident = f"lablink-{system}-{role}"
    return (
        f'<div class="form-group"><label for="{escape(ident)}">{label}</label>'
        f'<input class="form-control" type="number" id="{escape(ident)}" name="{escape(field)}" '
        f'data-role="{role}" min="0.5" step="0.5" max="{most:g}" placeholder="up to {most:g}">'
        "</div>"
    )


def _cloud_fields(system: dict[str, Any]) -> str:
    name = system["name"]
    flavors = system.get("flavors") or []
    rows = []
    for f in flavors:
        cores = "core" if f["cpu"] == 1 else "cores"
        size = f"{f['cpu']:g} {cores}, {f['memory']:g} GiB"
        if f.get("gpus"):
            size += f", {f['gpus']} GPU" + ("s" if f["gpus"] > 1 else "")
        limits = {"cpu": f["cpu"], "memory": f["memory"]}
        rows.append(
            f"<option value=\"{escape(f['name'])}\" data-limits='{escape(json.dumps(limits))}'>"
            f"{escape(f.get('display_name') or f['name'])} ({escape(size)})</option>"
        )
    ident = f"lablink-{name}-flavor"
    parts = [
        f'<div class="form-group"><label for="{escape(ident)}">Flavor</label>'
        f'<select class="form-control" id="{escape(ident)}" name="{escape(name)}.flavor" '
        f'data-role="flavor">{"".join(rows)}</select></div>'
    ]
    images = "".join(
        f'<option value="{escape(i["image"])}">{escape(i.get("display_name") or i["image"])}'
        "</option>"
        for i in system.get("images") or []
    )
    ident = f"lablink-{name}-image"
    parts.append(
        f'<div class="form-group"><label for="{escape(ident)}">Image</label>'
        f'<select class="form-control" id="{escape(ident)}" name="{escape(name)}.image" '
        f'data-role="image">{images}</select></div>'
    )
    patterns = system.get("image_patterns") or []
    if patterns:
        ident = f"lablink-{name}-image_other"
        parts.append(
            f'<div class="form-group"><label for="{escape(ident)}">Or another image</label>'
            f'<input class="form-control" type="text" id="{escape(ident)}" '
            f'name="{escape(name)}.image_other" data-role="image_other" maxlength="255" '
            f'placeholder="{escape(", ".join(patterns))}"></div>'
        )
    first = flavors[0] if flavors else {"cpu": 0, "memory": 0}
    parts.append(_amount(name, "cpu", "CPU cores (empty: the flavor's)", first["cpu"]))
    parts.append(_amount(name, "memory", "Memory in GiB (empty: the flavor's)", first["memory"]))
    return (
        f'<fieldset class="lablink-system-fields" data-system="{escape(name)}">'
        + "".join(parts)
        + "</fieldset>"
    )


NO_VO = (
    "<p class='lablink-no-vo alert alert-warning'>You are not a member of any VO of this "
    "site, so there is nothing you can start yet. Ask the site's support, or your "
    "workshop's organizers, to add you to a VO.</p>"
)


def _limit(used: int, limit: int | None) -> str:
    return f"{used} of {limit}" if limit is not None else f"{used} (no limit)"


PER_LAB = (
    ("nodes", "{} nodes"),
    ("gpus", "{} GPUs"),
    ("runtime", "{} minutes"),
    ("cpu", "{:g} CPU cores"),
    ("memory", "{:g} GiB memory"),
)


def vo_summary_html(vo: dict[str, Any]) -> str:
    """The active VO and its quota, above the form (and a hidden field naming it)."""
    q = vo["quota"]
    per_lab = [fmt.format(q["per_lab"][k]) for k, fmt in PER_LAB if q["per_lab"].get(k) is not None]
    maxima = f"; per lab up to {', '.join(per_lab)}" if per_lab else ""
    labs = _limit(q["labs"]["used"], q["labs"]["limit"])
    mine = _limit(q["labs_per_user"]["used"], q["labs_per_user"]["limit"])
    name = escape(vo["name"])
    return (
        f'<div class="lablink-vo-summary alert alert-info" data-vo="{name}">'
        f"<strong>VO {escape(vo['display_name'])}</strong>: "
        f'<span class="lablink-vo-labs">{labs} labs in use</span>, '
        f'<span class="lablink-vo-mine">yours {mine}</span>{escape(maxima)}.'
        f'<input type="hidden" name="vo" value="{name}"></div>'
    )


def options_form_html(catalog: dict[str, Any] | None) -> str:
    if not catalog:
        return (
            "<p class='lablink-unavailable'>The list of systems cannot be loaded right now. "
            "Start uses the site's default system; if that fails, try again in a minute.</p>"
        )
    active = next((v for v in catalog.get("vos") or [] if v.get("active")), None)
    summary = vo_summary_html(active) if active else ""
    if not catalog.get("systems"):
        if active is None:
            return NO_VO
        return summary + (
            f"<p class='lablink-nothing'>VO {escape(active['display_name'])} offers you no "
            "system here; choose another VO at the top right.</p>"
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
        elif system.get("kind") == "kubernetes":
            fields.append(_cloud_fields(system))
    return summary + (
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
    vo = (formdata.get("vo") or [""])[0].strip()
    if vo:
        options["vo"] = vo  # the spawner sends it as the request's VO, not as an option
    system = (formdata.get("system") or [""])[0].strip()
    if not system:
        return options
    options["system"] = system
    for key in (*HPC_FIELDS, *CLOUD_FIELDS):
        values = formdata.get(f"{system}.{key}")
        if values and values[0].strip():
            options[key] = values[0].strip()
    other = (formdata.get(f"{system}.image_other") or [""])[0].strip()
    if other:
        options["image"] = other  # typed: the backend checks it against the patterns
    return options
