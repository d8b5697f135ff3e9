"""A refused start is one line in the hub's log.

JupyterHub logs a failed spawn several times: ``User.spawn`` ("Not starting …"),
the spawn page ("Error starting server …", then "Failed to spawn single-user
server with form" with the traceback) and tornado (the HTTP error of an API
request). A refusal is the person's mistake, not the hub's: the spawner logs it
once ("<user>:<server> start refused: <sentence>") and :class:`QuietRefusals`,
on the handlers of JupyterHub's log, drops the others. Every other failure is
logged as JupyterHub logs it.
"""

from __future__ import annotations

import logging
import sys
import weakref
from pathlib import Path
from typing import Any


class Refusal(Exception):
    """Mixin of an exception that is a refused start (the person can fix it)."""


OWN = str(Path(__file__).parent)  # Lablink's own lines are kept

REFUSED: weakref.WeakSet[Refusal] = weakref.WeakSet()
"""Refusals still referenced (by a spawn future, a handler): their sentences."""


def refused(exc: Any) -> bool:
    return isinstance(exc, Refusal)


class QuietRefusals(logging.Filter):
    """Drops JupyterHub's and tornado's warnings and errors about a refused start."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.pathname.startswith(OWN):
            return True
        candidates = [
            record.exc_info[1] if record.exc_info else None,
            sys.exc_info()[1],
            *(record.args if isinstance(record.args, tuple) else ()),
        ]
        if any(refused(exc) for exc in candidates):
            return False
        message = record.getMessage()
        return not any(str(exc) and str(exc) in message for exc in list(REFUSED))


def quiet_refusals(log: logging.Logger) -> None:
    """Put the filter on ``log``'s handlers (JupyterHub's app log: tornado's loggers
    send their records there too), once."""
    for handler in log.handlers:
        if not any(isinstance(f, QuietRefusals) for f in handler.filters):
            handler.addFilter(QuietRefusals())
