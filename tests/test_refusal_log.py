"""A refused start is one line in the hub's log: JupyterHub's own lines about it,
and its traceback, are dropped; every other failure is logged as JupyterHub logs it.
(The hub's real log is checked in tests/test_e2e.py and tests/test_form_browser.py.)"""

from __future__ import annotations

import io
import logging

from spawner.logs import QuietRefusals, quiet_refusals
from spawner.spawner import LabRefused, LabSpawnError

SENTENCE = (
    "Run time: 9999 minutes is more than partition Batch allows in VO Demo; "
    "choose 10 to 240 minutes."
)


def hub_log() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    log = logging.getLogger("test-refusal-log")
    log.handlers = [logging.StreamHandler(out)]
    log.propagate = False
    log.setLevel(logging.INFO)
    quiet_refusals(log)
    quiet_refusals(log)  # once only
    assert sum(isinstance(f, QuietRefusals) for f in log.handlers[0].filters) == 1
    return log, out


def test_jupyterhubs_lines_about_a_refusal_are_dropped() -> None:
    log, out = hub_log()
    refusal = LabRefused(SENTENCE, status_code=422, options={"runtime": 9999}, field="runtime")
    try:
        raise refusal
    except LabRefused as exc:
        log.error(f"Not starting alice's server : {exc}")  # User.spawn, in its except
        log.error("Failed to spawn single-user server with form", exc_info=True)  # SpawnHandler
    log.error(f"Error starting server alice: {refusal}")  # after the spawn's future
    log.error("Previous spawn for %s failed: %s", "alice", refusal)  # the spawn-pending page
    log.info("422 POST /hub/spawn (alice@127.0.0.1) 30.00ms")
    assert out.getvalue().splitlines() == ["422 POST /hub/spawn (alice@127.0.0.1) 30.00ms"]


def test_other_failures_are_logged_with_their_traceback() -> None:
    log, out = hub_log()
    failed = LabSpawnError(
        "The lab ended before it answered.", reason="lab-failed", status_code=502
    )
    try:
        raise failed
    except LabSpawnError:
        log.error("Failed to spawn single-user server with form", exc_info=True)
    log.error(f"Error starting server alice: {failed}")
    text = out.getvalue()
    assert "Traceback" in text and "Error starting server alice: 502" in text


def test_a_refusal_away_from_the_form_links_back_to_it_and_the_form_does_not() -> None:
    """The progress page (a start refused after the hub's slow_spawn_timeout) shows the
    sentence with a way back to the server's form; the form itself shows it plainly."""
    refusal = LabRefused(
        SENTENCE,
        status_code=422,
        options={"runtime": 9999},
        field="runtime",
        form_url='/hub/spawn/alice/my"lab',
    )
    assert refusal.jupyterhub_html_message == (
        f'{SENTENCE} <a class="lablink-back-to-form" href="/hub/spawn/alice/my&quot;lab">'
        "Change your choices</a>"
    )
    assert refusal.form_html == SENTENCE
    assert LabRefused(SENTENCE, status_code=422, options={}, field="").jupyterhub_html_message == (
        SENTENCE
    )
