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
