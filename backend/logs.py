"""The services' log lines: text for people (the default), or one JSON object per
line for a log stack (``--log-format json``), and never a credential in either.

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
fields a line about a lab carries (``lab``, ``user``, ``server``, ``system``,
``vo``, ``from_state``, ``to_state``, ``reason``, ``handle``) and, for an error
with its cause, ``exception`` (the traceback as one string).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"
# the fields of a lab's log lines (backend/observe.py, backend/labs.py)
LAB_FIELDS = ("lab", "user", "server", "system", "vo", "from_state", "to_state", "reason", "handle")
NOISY = ("httpx", "httpcore", "alembic", "asyncssh")

# what a credential looks like in a sentence: a bearer token, a key=value secret
SECRETS = re.compile(
    r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(\b(?:token|secret|password|passwd|api_key|access_token)\b\s*[=:]\s*)[^\s,;&\"']+"
)


def hide_secrets(text: str) -> str:
    """``text`` with anything shaped like a credential replaced by ``[hidden]``."""
    return SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "[hidden]", text)


class HideSecrets(logging.Filter):
    """Defence in depth: no code logs a token, and a peer's error text that quotes
    one is cut here."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = hide_secrets(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }  # fmt: skip
        for field in LAB_FIELDS:
            value = record.__dict__.get(field)
            if value not in (None, ""):
                out[field] = value
        if record.exc_info:
            out["exception"] = hide_secrets(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """The root logger of a service: ``level``, to stderr, as text or JSON lines. As
    ``logging.basicConfig``, nothing changes where the root logger has handlers
    already (a test's)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(HideSecrets())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
