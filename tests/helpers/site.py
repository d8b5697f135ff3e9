"""Site files for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.labs import FAKELAB


def site_dict(state_dir: Path, database_url: str, **systems: dict[str, Any]) -> dict[str, Any]:
    return {
        "site_name": "Lablink tests",
        "state_dir": str(state_dir),
        "database_url": database_url,
        "tokens": [
            {"name": "hub", "secret_env": "LABLINK_TEST_HUB_TOKEN", "role": "hub"},
            {"name": "admin", "secret_env": "LABLINK_TEST_ADMIN_TOKEN", "role": "admin"},
        ],
        "default_system": "local",
        "systems": systems
        or {
            "local": {
                "kind": "local",
                "display_name": "Test machine",
                "command": FAKELAB,
                "start_timeout": 20,
                "stop_grace": 3,
            }
        },
    }


def hpc_system(**overrides: Any) -> dict[str, Any]:
    system: dict[str, Any] = {
        "kind": "unicore",
        "display_name": "Test HPC",
        "url": "http://127.0.0.1:8040/DEVSITE/rest/core",
        "auth": {"method": "basic", "username": "lablink", "password_env": "UNICORE_PW"},
        "setup": ["module load JupyterLab"],
        "environment": {"LABLINK_LAB_HOST": "127.0.0.1"},
        "partitions": {
            "batch": {
                "nodes": {"min": 1, "max": 4},
                "runtime": {"min": 10, "max": 120, "default": 30},
            },
            "gpus": {"gpus": {"min": 1, "max": 4, "default": 2}},
            "login": {"interactive": True, "login_node": "login*"},
        },
        "reservations": {"workshop": {"partitions": ["batch"]}},
        "access": [
            {"users": ["alice"], "accounts": ["alice", "alice2"], "projects": ["p1", "p2"]},
            {"groups": ["trainees"], "accounts": ["{user}"], "projects": ["training"]},
        ],
    }
    system.update(overrides)
    return system
