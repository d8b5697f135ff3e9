"""State at rest: what the services write is theirs alone.

The state directory holds the database (SQLite), tokens' neighbours, logs
and lab homes; nobody else on the machine should read it. Services create
directories 0700 and (with the umask :func:`private_umask` sets when a
service starts) files 0600.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made, or narrowed if it is
    ours and wider)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # not ours: leave it to its owner
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    return path


def private_umask() -> None:
    """Files and directories this process (and its children) creates are the owner's
    alone."""
    os.umask(PRIVATE_UMASK)
