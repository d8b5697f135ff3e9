"""Real peers the tests need: a test that cannot have one fails in CI and skips
on a developer machine, so that it never silently passes."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def peer_missing(what: str, why: str) -> NoReturn:
    """Fail in CI, skip elsewhere: a test that needs a peer never silently passes."""
    message = f"{what} is needed and not available: {why}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
