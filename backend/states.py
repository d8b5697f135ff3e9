"""The lab state machine (pure; no I/O).

States move forward along the chain

    accepted → submitted → queued → starting → running → stopping → stop_failed → stopped

and may skip states a driver does not have (a local lab is never queued; a
lab whose process ends by itself goes from running straight to stopped).
``stop_failed`` is a lab whose job or pod could not be ended yet: it stays
active (it holds its quota and its server name) while the stop is retried.
``failed`` is reachable from every state before ``stopped``. ``stopped`` and
``failed`` are final: nothing leaves them.
"""

from __future__ import annotations

from enum import StrEnum


class LabState(StrEnum):
    ACCEPTED = "accepted"
    SUBMITTED = "submitted"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOP_FAILED = "stop_failed"
    STOPPED = "stopped"
    FAILED = "failed"


CHAIN: tuple[LabState, ...] = (
    LabState.ACCEPTED,
    LabState.SUBMITTED,
    LabState.QUEUED,
    LabState.STARTING,
    LabState.RUNNING,
    LabState.STOPPING,
    LabState.STOP_FAILED,
    LabState.STOPPED,
)

FINAL = frozenset({LabState.STOPPED, LabState.FAILED})
ACTIVE = frozenset(CHAIN) - FINAL
STARTING_UP = frozenset(CHAIN[: CHAIN.index(LabState.RUNNING)])

# progress (0-100) shown on the spawn page when a lab enters a state
PROGRESS: dict[LabState, int] = {
    LabState.ACCEPTED: 5,
    LabState.SUBMITTED: 15,
    LabState.QUEUED: 30,
    LabState.STARTING: 50,
    LabState.RUNNING: 100,
    LabState.STOPPING: 100,
    LabState.STOP_FAILED: 100,
    LabState.STOPPED: 100,
    LabState.FAILED: 100,
}


class InvalidTransition(Exception):
    def __init__(self, current: LabState, new: LabState):
        super().__init__(f"a lab cannot go from {current} to {new}")
        self.current = current
        self.new = new


def can_move(current: LabState, new: LabState) -> bool:
    """Whether a lab in ``current`` may move to ``new``.

    Staying in the same non-final state is allowed: it records a further event
    (a message, a detail) without a transition.
    """
    if current in FINAL:
        return False
    if new == LabState.FAILED:
        return True
    if new == current:
        return True
    return CHAIN.index(new) > CHAIN.index(current)


def check_move(current: LabState, new: LabState) -> None:
    if not can_move(current, new):
        raise InvalidTransition(current, new)


def exit_status(state: LabState) -> int | None:
    """What JupyterHub's ``Spawner.poll`` should say for a lab in this state."""
    if state == LabState.STOPPED:
        return 0
    if state == LabState.FAILED:
        return 1
    return None
