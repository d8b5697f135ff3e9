"""Write helm/lablink/values.schema.json: helm/schema.yaml (every values key but
``site``, written by hand) with the backend's site-file schema at ``properties.site``.

    .venv/bin/python docs/generate_chart_schema.py          # rewrite the file
    .venv/bin/python docs/generate_chart_schema.py --check  # exit 1 if it is stale

The site's schema is the one ``lablink backend`` validates against (the registered
kinds' systems, told apart by ``kind``), made for Helm's validator: every ``$ref``
inlined, every object with keys of its own closed (``additionalProperties: false``),
a system's keys those of its ``kind`` (if/then), no top-level key required (the
chart adds the hub's token, and an empty site is its demo), descriptions kept, titles
and Python-only formats dropped. The output is deterministic: sorted keys, indent 2, a
trailing newline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.settings import settings_model  # noqa: E402

SOURCE = ROOT / "helm" / "schema.yaml"
TARGET = ROOT / "helm" / "lablink" / "values.schema.json"
DROPPED = {"title", "discriminator"}
FORMATS_KEPT = {"uri", "email", "date-time", "ipv4", "ipv6", "hostname"}


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``$ref`` replaced by its definition, titles and unknown
    formats dropped, and objects with properties closed."""
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name in seen:
            raise SystemExit(f"the site's schema refers to {name} within itself; cannot inline it")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        target = _inline(defs[name], defs, (*seen, name))
        return {**target, **_inline(rest, defs, seen)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or key == "$defs":
            continue
        if key == "format" and value not in FORMATS_KEPT:
            continue
        if key in ("properties", "patternProperties", "$defs"):
            out[key] = {k: _inline(v, defs, seen) for k, v in value.items()}
        else:
            out[key] = _inline(value, defs, seen)
    if "properties" in out:
        out["additionalProperties"] = False
        out.setdefault("type", "object")
    return out


def _by_kind(system: dict[str, Any]) -> dict[str, Any]:
    """A union of systems (``oneOf``, one branch per kind) as ``kind`` + if/then: a
    wrong key is then reported against its own kind alone, not against every kind."""
    branches = system.get("oneOf")
    if not branches:
        return system  # one kind only: its schema as it is
    kinds = [b["properties"]["kind"]["const"] for b in branches]
    return {
        "type": "object",
        "description": "a system; `kind` says which package runs its labs",
        "required": ["kind"],
        "properties": {"kind": {"enum": kinds, "description": "the kind of system"}},
        "allOf": [
            {"if": {"properties": {"kind": {"const": k}}, "required": ["kind"]}, "then": b}
            for k, b in zip(kinds, branches, strict=True)
        ],
    }


def site_schema() -> dict[str, Any]:
    """The site file's JSON schema, Helm-friendly (see the module's docstring)."""
    raw = settings_model().model_json_schema(mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    systems = schema["properties"]["systems"]
    systems["additionalProperties"] = _by_kind(systems["additionalProperties"])
    # nothing required at the top: the chart adds the hub's token, and an empty site
    # is the chart's demo (its default system); what is inside stays required
    schema.pop("required", None)
    schema["description"] = (
        "The site file the backend, the tunnel service and the UserLab Manager read "
        "(docs/config-reference.md), without secrets; the chart adds its own keys "
        "(tokens' hub token, state_dir, the services' URLs)."
    )
    return schema


def render() -> str:
    values = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    if not isinstance(values, dict) or "site" not in values.get("properties", {}):
        raise SystemExit(f"{SOURCE.relative_to(ROOT)} has no properties.site to fill in")
    values["properties"]["site"] = site_schema()
    return json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(
                f"{TARGET.relative_to(ROOT)} is stale: run python docs/generate_chart_schema.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
