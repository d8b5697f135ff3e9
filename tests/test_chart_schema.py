"""helm/lablink/values.schema.json: generated from helm/schema.yaml and the backend's
settings (docs/generate_chart_schema.py), fresh, and strict where it matters: a wrong
key under `site`, under a system of a kind, or at the top fails `helm install`."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "lablink"
FULL = ROOT / "tests" / "helm" / "values-full.yaml"
helm_python = pytest.importorskip("helm_python")


def test_the_schema_is_fresh() -> None:
    done = subprocess.run(
        [sys.executable, "docs/generate_chart_schema.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def validate(values: dict[str, Any]) -> str | None:
    """None when the values pass the chart's schema, else Helm's account."""
    chart = helm_python.Chart.load(str(CHART))
    try:
        chart.validate_schema(values)
    except Exception as exc:  # helm_python's error class
        return str(exc)
    return None


def full_values() -> dict[str, Any]:
    return yaml.safe_load(FULL.read_text()) if FULL.exists() else {}


def cloud_of(values: dict[str, Any]) -> str:
    return next(n for n, s in values["site"]["systems"].items() if s["kind"] == "kubernetes")


def test_every_test_values_file_passes() -> None:
    assert validate({}) is None
    for path in sorted((ROOT / "tests" / "helm").glob("values-*.yaml")):
        assert validate(yaml.safe_load(path.read_text())) is None, path.name


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda v: v["site"]["systems"][cloud_of(v)].update(flavours={}), ["flavours"]),
        (lambda v: v["site"]["systems"][cloud_of(v)].update(kind="nope"), ["kind"]),
        (lambda v: v["site"].update(sitename="x"), ["/site", "sitename"]),
        (lambda v: v["site"]["tunnel_service"].update(advertize="x"), ["advertize"]),
        (lambda v: v.update(hubb={}), ["hubb"]),
    ],
)
def test_a_wrong_key_fails(change: Any, words: list[str]) -> None:
    values = copy.deepcopy(full_values())
    if not values:
        pytest.skip("tests/helm/values-full.yaml is not there yet")
    values["site"].setdefault("tunnel_service", {})
    change(values)
    problem = validate(values)
    assert problem is not None
    for word in words:
        assert word in problem


@pytest.mark.parametrize("name", ["values-minimal", "values-full", "values-wiring", None])
def test_the_rendered_site_passes_lablink_check(
    name: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The site file the chart renders is one the services accept (`--no-secrets`: the
    secrets are the pods')."""
    from backend.cli import main

    path = ROOT / "tests" / "helm" / f"{name}.yaml"
    if name is not None and not path.exists():
        pytest.skip(f"tests/helm/{name}.yaml is not there yet")
    values = yaml.safe_load(path.read_text()) if name else {}
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name="lablink", namespace="lablink", is_install=True)
    [configmap] = [t for p, t in rendered.items() if p.endswith("site-configmap.yaml")]
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_load(configmap)["data"]["site.yaml"])
    assert main(["check", "--site", str(site_file), "--no-secrets"]) == 0, capsys.readouterr().err
