"""The generated configuration reference is current; the options form is safe HTML."""

import subprocess
import sys
from pathlib import Path
from typing import Any

from backend.catalog import catalog
from backend.settings import Settings
from spawner.form import options_form_html
from spawner.spawner import LablinkSpawner
from tests.helpers import site

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


HPC = {
    "kind": "unicore",
    "display_name": "HPC <fast>",
    "url": "https://unicore.example.org/X/rest/core",
    "partitions": {
        "batch": {
            "display_name": "Batch <fast>",
            "description": "up to two hours",
            "nodes": {"max": 4},
            "runtime": {"min": 10, "max": 120},
        },
        "login": {"display_name": "Quick", "interactive": True},
        "gpus": {"gpus": {"min": 1, "max": 2}},
    },
    "reservations": {"workshop": {"partitions": ["batch"]}},
    "access": [{"users": ["*"], "accounts": ["alice", "alice2"], "projects": ["p1"]}],
}
CLOUD = {
    "kind": "kubernetes",
    "display_name": "HDF Cloud",
    "flavors": {
        "small": {"display_name": "Small <b>", "cpu": 1, "memory": 2},
        "gpu": {"cpu": 8, "memory": 32, "gpus": 2},
    },
    "images": [
        {
            "image": "quay.io/jupyter/scipy-notebook:2025-01-06",
            "display_name": "SciPy <script>alert(1)</script>",
        }
    ],
    "image_patterns": ["quay.io/jupyter/*"],
}


def form_site(hpc: dict[str, Any] = HPC) -> Settings:
    """Three systems whose names and descriptions hold HTML; the cloud is the default."""
    systems = {
        "local": {"kind": "local", "display_name": "This machine", "description": "a process here"},
        "hpc": hpc,
        "cloud": CLOUD,
    }
    doc = site.doc(None, systems=systems, default_system="cloud", tokens=site.hub_token("T"))
    return site.settings(doc)


def form_for(user: str = "alice") -> str:
    return options_form_html(catalog(form_site(), user))


def test_form_lists_systems_and_selects_the_default() -> None:
    html = form_for()
    # the short name in the option, its description beneath the select
    assert '<option value="local" data-description="a process here">This machine</option>' in html
    assert '<option value="cloud" selected' in html and ">HDF Cloud</option>" in html
    assert 'name="system"' in html


def test_form_escapes_what_the_site_file_says() -> None:
    html = form_for()
    assert "<script>alert(1)</script>" not in html and "SciPy &lt;script&gt;" in html
    assert "Batch &lt;fast&gt;" in html and "HPC &lt;fast&gt;" in html
    assert html.count("<script>") == 1  # Lablink's own, which shows the chosen system's fields


def test_form_without_catalog_says_so() -> None:
    assert "cannot be loaded" in options_form_html(None)


def test_options_from_form_takes_only_the_system() -> None:
    spawner = LablinkSpawner()
    assert spawner.options_from_form({"system": [" local "], "evil": ["x"]}) == {"system": "local"}
    assert spawner.options_from_form({}) == {}


def test_form_offers_an_hpc_systems_accounts_partitions_and_ranges() -> None:
    html = form_for()
    assert '<fieldset class="lablink-system-fields" data-system="hpc">' in html
    assert 'name="hpc.account"' in html and '<option value="alice2">alice2</option>' in html
    assert 'name="hpc.project"' in html
    assert 'name="hpc.partition"' in html and "Batch &lt;fast&gt;" in html
    assert 'data-description="up to two hours"' in html
    assert ">Quick (login node)</option>" in html
    assert 'name="hpc.nodes"' in html and 'min="1" max="4" step="1"' in html
    assert 'name="hpc.runtime"' in html and 'min="10" max="120" step="1"' in html
    assert 'id="lablink-hpc-runtime-range">10 to 120 minutes</small>' in html
    assert """data-sets='{"gpus": {"default": 1, "max": 2, "min": 1}""" in html
    assert """<option value="workshop" data-when='{"partition": ["batch"]}'>workshop""" in html
    assert '<option value="">none</option>' in html


def test_a_system_without_reservations_has_no_reservation_field() -> None:
    hpc = {key: value for key, value in HPC.items() if key != "reservations"}
    html = options_form_html(catalog(form_site(hpc), "alice"))
    assert 'name="hpc.partition"' in html and 'name="hpc.reservation"' not in html


def test_options_from_form_takes_the_chosen_systems_fields() -> None:
    spawner = LablinkSpawner()
    form = {
        "system": ["hpc"],
        "hpc.account": ["alice"],
        "hpc.partition": ["batch"],
        "hpc.nodes": ["2"],
        "hpc.runtime": ["30"],
        "hpc.reservation": [""],
        "other.partition": ["x"],
        "hpc.Evil-Key": ["x"],
        "hpc.vo": ["x"],
    }
    assert spawner.options_from_form(form) == {
        "system": "hpc",
        "account": "alice",
        "partition": "batch",
        "nodes": "2",
        "runtime": "30",
    }
    # a key the system does not have travels on, and the backend refuses it by name
    form["hpc.colour"] = ["blue"]
    assert spawner.options_from_form(form)["colour"] == "blue"


def test_form_offers_a_cloud_systems_flavors_images_and_limits() -> None:
    html = form_for()
    assert '<fieldset class="lablink-system-fields" data-system="cloud">' in html
    assert 'name="cloud.flavor"' in html
    assert "Small &lt;b&gt; (1 core, 2 GiB)</option>" in html
    assert "gpu (8 cores, 32 GiB, 2 GPUs)</option>" in html
    assert '<option value="quay.io/jupyter/scipy-notebook:2025-01-06"' in html
    assert 'name="cloud.image.other"' in html and 'placeholder="quay.io/jupyter/*"' in html
    assert 'name="cloud.cpu"' in html and 'max="1.0"' in html
    assert 'name="cloud.memory"' in html and 'max="2.0"' in html


def test_options_from_form_takes_the_chosen_cloud_systems_fields() -> None:
    spawner = LablinkSpawner()
    form = {
        "system": ["cloud"],
        "cloud.flavor": ["gpu"],
        "cloud.image.other": [""],
        "cloud.image": ["quay.io/jupyter/scipy-notebook:2025-01-06"],
        "cloud.cpu": ["4"],
        "cloud.memory": [""],
        "hpc.partition": ["batch"],
    }
    assert spawner.options_from_form(form) == {
        "system": "cloud",
        "flavor": "gpu",
        "image": "quay.io/jupyter/scipy-notebook:2025-01-06",
        "cpu": "4",
    }
    form["cloud.image.other"] = [" quay.io/jupyter/pytorch-notebook:cuda12 "]
    assert spawner.options_from_form(form)["image"] == "quay.io/jupyter/pytorch-notebook:cuda12"


def test_a_site_template_replaces_the_form(tmp_path: Path) -> None:
    (tmp_path / "lablink_form.html").write_text(
        "{% for s in systems %}<p>{{ s.name }}: {{ s.fields | length }} fields</p>{% endfor %}"
    )
    html = options_form_html(catalog(form_site(), "alice"), [str(tmp_path)])
    assert "<p>local: 0 fields</p><p>hpc: 7 fields</p><p>cloud: 4 fields</p>" == html
