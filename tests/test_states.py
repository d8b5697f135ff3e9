"""The lab state machine, as a table of moves."""

from __future__ import annotations

import itertools

import pytest

from backend.states import (
    ACTIVE,
    CHAIN,
    FINAL,
    PROGRESS,
    InvalidTransition,
    LabState,
    can_move,
    check_move,
    exit_status,
)

S = LabState

ALLOWED = [
    # forward one step along the chain
    (S.ACCEPTED, S.SUBMITTED),
    (S.SUBMITTED, S.QUEUED),
    (S.QUEUED, S.STARTING),
    (S.STARTING, S.RUNNING),
    (S.RUNNING, S.STOPPING),
    (S.STOPPING, S.STOPPED),
    # forward, skipping states a driver does not have
    (S.SUBMITTED, S.STARTING),  # a local lab is never queued
    (S.ACCEPTED, S.STOPPING),  # stopped before it was submitted
    (S.ACCEPTED, S.STOPPED),
    (S.QUEUED, S.STOPPING),
    (S.STARTING, S.STOPPED),
    (S.RUNNING, S.STOPPED),  # ended by itself
    # failed from every state before the final ones
    (S.ACCEPTED, S.FAILED),
    (S.SUBMITTED, S.FAILED),
    (S.QUEUED, S.FAILED),
    (S.STARTING, S.FAILED),
    (S.RUNNING, S.FAILED),
    (S.STOPPING, S.FAILED),
    # staying in a non-final state records a further event
    (S.ACCEPTED, S.ACCEPTED),
    (S.SUBMITTED, S.SUBMITTED),
    (S.QUEUED, S.QUEUED),
    (S.STARTING, S.STARTING),
    (S.RUNNING, S.RUNNING),
    (S.STOPPING, S.STOPPING),
]

FORBIDDEN = [
    # backwards
    (S.SUBMITTED, S.ACCEPTED),
    (S.STARTING, S.QUEUED),
    (S.STARTING, S.SUBMITTED),
    (S.RUNNING, S.STARTING),
    (S.RUNNING, S.ACCEPTED),
    (S.STOPPING, S.RUNNING),
    # nothing leaves stopped
    (S.STOPPED, S.STOPPED),
    (S.STOPPED, S.FAILED),
    (S.STOPPED, S.RUNNING),
    (S.STOPPED, S.ACCEPTED),
    (S.STOPPED, S.STOPPING),
    # nothing leaves failed
    (S.FAILED, S.FAILED),
    (S.FAILED, S.STOPPED),
    (S.FAILED, S.RUNNING),
    (S.FAILED, S.ACCEPTED),
    (S.FAILED, S.STOPPING),
]


def _ids(moves: list[tuple[LabState, LabState]]) -> list[str]:
    return [f"{a}->{b}" for a, b in moves]


@pytest.mark.parametrize(("current", "new"), ALLOWED, ids=_ids(ALLOWED))
def test_allowed_move(current: LabState, new: LabState) -> None:
    assert can_move(current, new)
    check_move(current, new)  # does not raise


@pytest.mark.parametrize(("current", "new"), FORBIDDEN, ids=_ids(FORBIDDEN))
def test_forbidden_move(current: LabState, new: LabState) -> None:
    assert not can_move(current, new)
    with pytest.raises(InvalidTransition) as info:
        check_move(current, new)
    assert info.value.current == current
    assert info.value.new == new
    assert str(info.value) == f"a lab cannot go from {current} to {new}"


def test_every_pair_follows_the_rules() -> None:
    """All 81 pairs: forward or same while active, failed from any active, never out of final."""
    for current, new in itertools.product(LabState, LabState):
        if current in FINAL:
            expected = False
        elif new == S.FAILED:
            expected = True
        else:
            expected = CHAIN.index(new) >= CHAIN.index(current)
        assert can_move(current, new) is expected, (current, new)


def test_state_sets() -> None:
    assert FINAL == {S.STOPPED, S.FAILED}
    assert {
        S.ACCEPTED,
        S.SUBMITTED,
        S.QUEUED,
        S.STARTING,
        S.RUNNING,
        S.STOPPING,
        S.STOP_FAILED,
    } == ACTIVE
    assert not ACTIVE & FINAL
    assert set(LabState) == ACTIVE | FINAL
    assert CHAIN[0] == S.ACCEPTED
    assert CHAIN[-1] == S.STOPPED


def test_progress_grows_along_the_chain() -> None:
    assert set(PROGRESS) == set(LabState)
    values = [PROGRESS[s] for s in CHAIN]
    assert values == sorted(values)
    assert all(0 <= v <= 100 for v in PROGRESS.values())
    assert PROGRESS[S.RUNNING] == 100
    assert PROGRESS[S.FAILED] == 100


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (S.ACCEPTED, None),
        (S.SUBMITTED, None),
        (S.QUEUED, None),
        (S.STARTING, None),
        (S.RUNNING, None),
        (S.STOPPING, None),
        (S.STOPPED, 0),
        (S.FAILED, 1),
    ],
)
def test_exit_status(state: LabState, status: int | None) -> None:
    assert exit_status(state) == status
