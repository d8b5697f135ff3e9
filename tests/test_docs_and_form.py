"""The generated configuration reference is current; the options form is safe HTML."""

import subprocess
import sys
from pathlib import Path

from spawner.form import options_form_html
from spawner.spawner import LablinkSpawner

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_form_lists_systems_and_selects_the_default() -> None:
    html = options_form_html(
        {
            "default_system": "b",
            "systems": [
                {"name": "a", "display_name": "System A", "description": "first"},
                {"name": "b", "display_name": "System B", "description": ""},
            ],
        }
    )
    assert '<option value="a">System A — first</option>' in html
    assert '<option value="b" selected>System B</option>' in html
    assert 'name="system"' in html


def test_form_escapes_what_the_site_file_says() -> None:
    html = options_form_html(
        {
            "default_system": "x",
            "systems": [{"name": "x", "display_name": "<script>alert(1)</script>"}],
        }
    )
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_form_without_catalog_says_so() -> None:
    assert "cannot be loaded" in options_form_html(None)


def test_options_from_form_takes_only_the_system() -> None:
    spawner = LablinkSpawner()
    assert spawner.options_from_form({"system": [" local "], "evil": ["x"]}) == {"system": "local"}
    assert spawner.options_from_form({}) == {}


HPC_CATALOG = {
    "default_system": "local",
    "systems": [
        {"name": "local", "kind": "local", "display_name": "This machine"},
        {
            "name": "hpc",
            "kind": "unicore",
            "display_name": "HPC",
            "accounts": ["alice", "alice2"],
            "projects": ["p1"],
            "partitions": [
                {
                    "name": "batch",
                    "display_name": "Batch <fast>",
                    "interactive": False,
                    "nodes": {"min": 1, "max": 4, "default": 1},
                    "runtime": {"min": 10, "max": 120, "default": 60},
                    "gpus": {"min": 0, "max": 0, "default": 0},
                    "reservations": ["workshop"],
                },
                {
                    "name": "login",
                    "display_name": "Login",
                    "interactive": True,
                    "nodes": {"min": 1, "max": 1, "default": 1},
                    "runtime": {"min": 10, "max": 480, "default": 120},
                    "gpus": {"min": 0, "max": 0, "default": 0},
                    "reservations": [],
                },
            ],
        },
    ],
}


def test_form_offers_an_hpc_systems_accounts_partitions_and_ranges() -> None:
    html = options_form_html(HPC_CATALOG)
    assert '<fieldset class="lablink-system-fields" data-system="hpc">' in html
    assert 'name="hpc.account"' in html and '<option value="alice2">alice2</option>' in html
    assert 'name="hpc.project"' in html
    assert 'name="hpc.partition"' in html and "Batch &lt;fast&gt;" in html
    assert "Login (login node)" in html
    assert 'name="hpc.nodes"' in html and 'min="1" max="4" value="1"' in html
    assert 'name="hpc.runtime"' in html and 'min="10" max="120" value="60"' in html
    assert '<option value="workshop" data-partitions="batch">workshop</option>' in html
    assert "<script>" in html  # shows the chosen system's fields only


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
        "hpc.evil": ["x"],
    }
    assert spawner.options_from_form(form) == {
        "system": "hpc",
        "account": "alice",
        "partition": "batch",
        "nodes": "2",
        "runtime": "30",
    }


CLOUD_CATALOG = {
    "site_name": "Test",
    "default_system": "cloud",
    "systems": [
        {
            "name": "cloud",
            "kind": "kubernetes",
            "display_name": "HDF Cloud",
            "description": "",
            "flavors": [
                {"name": "small", "display_name": "Small <b>", "description": "", "cpu": 1.0,
                 "memory": 2.0, "gpus": 0},
                {"name": "gpu", "display_name": "gpu", "description": "", "cpu": 8.0,
                 "memory": 32.0, "gpus": 2},
            ],
            "images": [
                {"image": "quay.io/jupyter/scipy-notebook:2025-01-06",
                 "display_name": "SciPy <script>alert(1)</script>", "description": ""},
            ],
            "image_patterns": ["quay.io/jupyter/*"],
        },
    ],
}  # fmt: skip


def test_form_offers_a_cloud_systems_flavors_images_and_limits() -> None:
    html = options_form_html(CLOUD_CATALOG)
    assert '<fieldset class="lablink-system-fields" data-system="cloud">' in html
    assert 'name="cloud.flavor"' in html
    assert "Small &lt;b&gt; (1 core, 2 GiB)</option>" in html
    assert "gpu (8 cores, 32 GiB, 2 GPUs)</option>" in html
    assert '<option value="quay.io/jupyter/scipy-notebook:2025-01-06">' in html
    assert "<script>alert(1)</script>" not in html and "SciPy &lt;script&gt;" in html
    assert 'name="cloud.image_other"' in html and 'placeholder="quay.io/jupyter/*"' in html
    assert 'name="cloud.cpu"' in html and 'max="1"' in html
    assert 'name="cloud.memory"' in html and 'max="2"' in html


def test_options_from_form_takes_the_chosen_cloud_systems_fields() -> None:
    spawner = LablinkSpawner()
    form = {
        "system": ["cloud"],
        "cloud.flavor": ["gpu"],
        "cloud.image": ["quay.io/jupyter/scipy-notebook:2025-01-06"],
        "cloud.image_other": [""],
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
    form["cloud.image_other"] = [" quay.io/jupyter/pytorch-notebook:cuda12 "]
    assert spawner.options_from_form(form)["image"] == "quay.io/jupyter/pytorch-notebook:cuda12"
