"""What each service loads: the tunnel service and the UserLab Manager share the
services' frame (backend/service.py) and the site file's models, but not the
backend's app, labs, drivers or database."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BACKEND_ONLY = ("backend.app", "backend.labs", "backend.db", "backend.store", "backend.api")


@pytest.mark.parametrize("service", ["tunnel.app", "userlab_manager.app"])
def test_a_service_beside_the_backend_does_not_load_the_backends_own_parts(service: str) -> None:
    code = f"import sys, json, {service}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert "backend.service" in loaded
    assert not loaded & set(BACKEND_ONLY), sorted(loaded & set(BACKEND_ONLY))
