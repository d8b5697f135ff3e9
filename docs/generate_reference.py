"""Write docs/config-reference.md from the settings model and the hub traits.

    .venv/bin/python docs/generate_reference.py          # rewrite the file
    .venv/bin/python docs/generate_reference.py --check  # exit 1 if it is stale

The test suite runs the check, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.settings import Settings, settings_model  # noqa: E402
from backend.systems.base import SystemSettings  # noqa: E402
from backend.systems.registry import kinds  # noqa: E402
from spawner.auth import DemoAuthenticator  # noqa: E402
from spawner.oidc import LablinkOIDCAuthenticator  # noqa: E402
from spawner.spawner import LablinkSpawner  # noqa: E402

TARGET = ROOT / "docs" / "config-reference.md"


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is PydanticUndefined:
        return ""
    return f"`{field.default!s}`" if field.default not in ("", None) else "unset"


def _ordered(model: type[BaseModel]) -> list[str]:
    """A kind's keys: what every system has, then the kind's own, then what it shares
    with other kinds (a batch kind's partitions, ...)."""
    keys = list(model.model_fields)
    if not issubclass(model, SystemSettings):
        return keys
    common = [k for k in keys if k in SystemSettings.model_fields]
    own = [k for k in inspect.get_annotations(model) if k in keys and k not in common]
    return common + own + [k for k in keys if k not in common and k not in own]


def model_table(model: type[BaseModel]) -> list[str]:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name in _ordered(model):
        field = model.model_fields[name]
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_default(field)} | {desc} |")
    return rows


def trait_table(cls: Any) -> list[str]:
    rows = ["| trait | default | help |", "| --- | --- | --- |"]
    own = cls.class_own_traits(config=True)
    for name in sorted(own):
        trait = own[name]
        help_text = " ".join((trait.help or "").split()).replace("|", "\\|")
        default = trait.default_value_repr()
        if cls.__dict__.get(f"_default_{name}") is not None:
            default = "computed"
        rows.append(f"| `{cls.__name__}.{name}` | `{default}` | {help_text} |")
    return rows


def _models_in(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """The models a field holds, each with how its key path goes on: '' for the model
    itself, '[]' for a list's items, '.<name>' for a mapping's values."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _models_in(get_args(annotation)[0])
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _models_in(arg)
    elif origin is list:
        for suffix, model in _models_in(get_args(annotation)[0]):
            yield "[]" + suffix, model
    elif origin is dict:
        for suffix, model in _models_in(get_args(annotation)[1]):
            yield ".<name>" + suffix, model
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation


def _tag(model: type[BaseModel]) -> str:
    """ " with `method: basic`" for a model told apart by a required one-value field."""
    for name, field in model.model_fields.items():
        args = get_args(field.annotation)
        if field.is_required() and get_origin(field.annotation) is Literal and len(args) == 1:
            return f" with `{name}: {args[0]}`"
    return ""


def _about(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split()) if doc and not doc.startswith("Usage docs") else ""


def document(
    model: type[BaseModel], path: str, level: int, done: dict[type[BaseModel], str]
) -> list[str]:
    """A model's table, then each model it holds, once: a model met again is named, not
    repeated."""
    out = ["#" * level + f" `{path}`{_tag(model)}", ""]
    if _about(model):
        out += [_about(model), ""]
    out += [*model_table(model), ""]
    done[model] = path
    for name, field in model.model_fields.items():
        for suffix, sub in _models_in(field.annotation):
            where = f"{path}.{name}{suffix}" if path else f"{name}{suffix}"
            if sub in done:
                out += [f"`{where}`: as `{done[sub]}` above.", ""]
            else:
                out += document(sub, where, min(level + 1, 5), done)
    return out


def render() -> str:
    done: dict[type[BaseModel], str] = {}
    out = [
        "# Configuration reference",
        "",
        "Generated by `docs/generate_reference.py` from the code; do not edit by hand.",
        "",
        "## The site file (backend)",
        "",
        "One YAML file, validated when the backend starts; a bad key stops it with a message",
        "that names the key and its line.",
        "",
        "### Top level",
        "",
        *model_table(settings_model()),
        "",
    ]
    done[Settings] = ""
    for name, field in Settings.model_fields.items():
        if name == "systems":
            continue
        for suffix, sub in _models_in(field.annotation):
            out += document(sub, f"{name}{suffix}", 3, done)
    for name, kind in kinds().items():
        out += [
            f"### `systems.<name>` with `kind: {name}`",
            "",
            f"{kind.summary[0].upper()}{kind.summary[1:]}.",
            "",
            *model_table(kind.settings),
            "",
        ]
        done[kind.settings] = f"systems.<name> (kind: {name})"
        for key, field in kind.settings.model_fields.items():
            for suffix, sub in _models_in(field.annotation):
                where = f"systems.<name>.{key}{suffix}"
                if sub in done:
                    out += [f"`{where}`: as `{done[sub]}` above.", ""]
                else:
                    out += document(sub, where, 4, done)
    out += [
        "## Hub settings (`jupyterhub_config.py`)",
        "",
        *trait_table(LablinkSpawner),
        "",
        *trait_table(DemoAuthenticator),
        "",
        'OpenID Connect login (`authenticator_class = "lablink-oidc"`), beside every trait of',
        "oauthenticator's `GenericOAuthenticator`:",
        "",
        *trait_table(LablinkOIDCAuthenticator),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python docs/generate_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
