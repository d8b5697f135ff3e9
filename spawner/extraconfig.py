"""The admin's own additions to the hub's configuration (``LABLINK_HUB_EXTRA_CONFIG``).

Every ``*.py`` file of one directory (the Helm chart mounts its ``hub.extraConfig``
there, one file per entry) runs in name order at the end of Lablink's
``jupyterhub_config.py``, with ``c`` (the configuration) and ``get_config`` in scope,
as it would in a ``jupyterhub_config.py`` of the admin's own. A file that cannot be
read or that fails stops the hub with one sentence naming it, never a traceback.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any


def extra_config_files(directory: Path) -> list[Path]:
    """The files that run, in order; SystemExit with a sentence when ``directory`` is
    not a directory."""
    if not directory.is_dir():
        raise SystemExit(
            f"LABLINK_HUB_EXTRA_CONFIG: {directory} is not a directory; it names the "
            "directory whose *.py files are added to the hub's configuration."
        )
    # a ConfigMap's own entries (..data, ..2026_…) start with a dot
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith(".") and p.is_file())


def _line_in(path: Path, exc: BaseException) -> str:
    """', line N' of the deepest frame of ``exc`` that is in ``path``, or ''."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path) and exc.lineno:
        return f", line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f", line {frames[-1].lineno}" if frames else ""


def run_extra_config(directory: Path, config: Any) -> list[Path]:
    """Run every ``*.py`` of ``directory`` in name order with ``c = config``; the files
    run. A file that fails: SystemExit with one sentence that names it."""
    ran = []
    for path in extra_config_files(directory):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise SystemExit(f"hub extra configuration {path}: cannot be read: {why}.") from None
        scope = {
            "__name__": f"lablink_extra_config_{path.stem}",
            "__file__": str(path),
            "c": config,
            "get_config": lambda: config,
        }
        try:
            exec(compile(source, str(path), "exec"), scope)  # noqa: S102  # the admin's own code
        except Exception as exc:  # one sentence, whatever it raised (SystemExit passes)
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if isinstance(exc, SyntaxError):
                detail = exc.msg
            raise SystemExit(
                f"hub extra configuration {path}{_line_in(path, exc)} failed: "
                f"{type(exc).__name__}{': ' + detail if detail else ''}."
            ) from None
        ran.append(path)
    return ran
