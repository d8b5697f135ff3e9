"""The lab manager with fake drivers (tests/helpers/fakes.py): the state machine
around a driver that never gets ready, breaks, stops slowly, ends by itself or ended
while the backend was down. No HTTP, no peers: the manager and its database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from backend.db import create_engine, migrate
from backend.labs import INTERNAL_ERROR, LabManager
from backend.store import Lab, Store
from tests.helpers import site
from tests.helpers.fakes import (
    Crashes,
    EndedWhileDown,
    FakeDriver,
    LosesTrack,
    NeverReady,
    PrintsNul,
    SlowStop,
    StopFails,
)

Manager = Callable[[FakeDriver], LabManager]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/backend.sqlite")
    await migrate(engine)
    yield Store(engine)
    await engine.dispose()


@pytest.fixture
async def manager(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    """Managers whose one system's kind is played by a fake driver."""
    settings = site.settings(site.doc(tmp_path / "state"))
    made: list[LabManager] = []
    http = httpx.AsyncClient()

    def make(driver: FakeDriver) -> LabManager:
        lab_manager = LabManager(settings, store, http)
        lab_manager.drivers["local"] = driver
        lab_manager.stop_retry_first = 0.05  # a failed stop is tried again at once
        made.append(lab_manager)
        return lab_manager

    yield make
    for lab_manager in made:
        await lab_manager.close()
    await http.aclose()


async def create(manager: LabManager, server: str = "") -> Lab:
    return await manager.create(user_name="alice", server_name=server, vo=None, options={}, env={})


async def until(store: Store, lab_id: str, *states: str, timeout: float = 5) -> Lab:
    for _ in range(int(timeout / 0.02)):
        lab = await store.get_lab(lab_id)
        assert lab is not None
        if lab.state in states:
            return lab
        await asyncio.sleep(0.02)
    raise AssertionError(f"lab {lab_id} stayed {lab.state}, wanted {states}")


async def messages(store: Store, lab_id: str) -> list[tuple[str, str]]:
    return [(e.state, e.message) for e in await store.events(lab_id)]


async def test_a_lab_that_never_gets_ready_is_stopped_and_its_start_called_off(
    manager: Manager, store: Store
) -> None:
    driver = NeverReady()
    labs = manager(driver)
    lab = await create(labs)
    await until(store, lab.id, "submitted")
    await labs.stop(await store.get_lab(lab.id) or lab)
    stopped = await until(store, lab.id, "stopped")
    assert stopped.message == "The lab was stopped."
    assert driver.called("start") == 1 and driver.called("stop") == 1
    assert lab.id not in labs._runs  # the start was cancelled, not left waiting


async def test_a_driver_that_breaks_fails_the_lab_with_a_sentence_and_cleans_up(
    manager: Manager, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    driver = Crashes()
    lab = await create(manager(driver))
    failed = await until(store, lab.id, "failed")
    assert failed.message == INTERNAL_ERROR
    assert driver.called("stop") == 1  # what it may have launched is ended
    assert "the fake driver broke" not in " ".join(m for _, m in await messages(store, lab.id))
    assert any("start broke" in r.getMessage() for r in caplog.records)


async def test_a_slow_stop_is_one_stop_however_often_it_is_asked(
    manager: Manager, store: Store
) -> None:
    driver = SlowStop(seconds=0.5)
    labs = manager(driver)
    lab = await until(store, (await create(labs)).id, "running")
    first = await labs.stop(lab)
    again = await labs.stop(await store.get_lab(lab.id) or lab)
    assert first.state == again.state == "stopping"
    assert (await until(store, lab.id, "stopped")).state == "stopped"
    assert driver.called("stop") == 1
    assert (await labs.stop(await store.get_lab(lab.id) or lab)).state == "stopped"


async def test_a_lab_that_ends_by_itself_is_stopped_with_its_words(
    manager: Manager, store: Store
) -> None:
    driver = FakeDriver()
    labs = manager(driver)
    lab = await until(store, (await create(labs)).id, "running")
    driver.ended.set()
    ended = await until(store, lab.id, "stopped")
    assert ended.message == "The lab ended by itself (exit code 0). It was done."
    last = (await store.events(lab.id))[-1]
    assert last.detail == "the fake lab's last words"


async def test_after_a_restart_labs_are_followed_given_up_or_ended(
    manager: Manager, store: Store
) -> None:
    first = manager(FakeDriver())
    running = await until(store, (await create(first, "a")).id, "running")
    await first.close()
    # a lab the backend accepted but never launched (no handle)
    waiting = manager(NeverReady())
    never = await create(waiting, "b")
    await until(store, never.id, "submitted")
    await waiting.close()  # the backend goes down
    again = manager(FakeDriver())
    await again.recover_all()
    assert (await until(store, running.id, "running")).url == running.url
    given_up = await until(store, never.id, "failed")
    assert "before the lab was launched" in given_up.message
    await again.close()  # down again; the lab ends meanwhile

    ended_meanwhile = manager(EndedWhileDown())
    await ended_meanwhile.recover_all()
    ended = await until(store, running.id, "stopped")
    assert ended.message == "The fake lab ended while the backend was down."


async def test_a_lab_lablink_loses_track_of_fails_with_a_sentence(
    manager: Manager, store: Store
) -> None:
    """Before, an exception while following a running lab ended the task and left the
    lab running for ever, holding its quota and its server name."""
    driver = LosesTrack()
    labs = manager(driver)
    lab = await create(labs)
    failed = await until(store, lab.id, "failed")
    assert failed.message == INTERNAL_ERROR
    assert driver.called("stop") == 1  # what it left is cleared


async def test_a_stop_the_system_does_not_confirm_keeps_the_lab_active_and_is_retried(
    manager: Manager, store: Store
) -> None:
    """Before, a failed stop made the lab 'failed' (its quota released, its server name
    free) while its job might still run."""
    driver = StopFails(times=2)
    labs = manager(driver)
    labs.stop_retry_first = 0.3
    lab = await until(store, (await create(labs)).id, "running")
    await labs.stop(lab)
    stuck = await until(store, lab.id, "stop_failed")
    assert stuck.active
    assert "could not be stopped yet: The fake system cannot be reached" in stuck.message
    assert [lab.id for lab in await store.list_labs(user_name="alice", active_only=True)] == [
        lab.id
    ]
    await labs.stop(stuck)  # asked again: tried again at once, not after the backoff
    stopped = await until(store, lab.id, "stopped", timeout=5)
    assert stopped.message == "The lab was stopped."
    assert driver.called("stop") == 3
    states = [state for state, _ in await messages(store, lab.id)]
    assert states.count("stop_failed") == 1  # the same sentence is not stored twice


async def test_a_failed_stop_is_taken_up_again_after_a_restart(
    manager: Manager, store: Store
) -> None:
    first = manager(StopFails(times=100))
    lab = await until(store, (await create(first)).id, "running")
    await first.stop(lab)
    await until(store, lab.id, "stop_failed")
    await first.close()  # the backend goes down with the stop not done
    again = manager(StopFails(times=0))
    await again.recover_all()
    assert (await until(store, lab.id, "stopped")).message == "The lab was stopped."


async def test_what_a_lab_prints_is_cleaned_before_it_is_stored(
    manager: Manager, store: Store
) -> None:
    labs = manager(PrintsNul())
    lab = await until(store, (await create(labs)).id, "running")
    await labs.stop(lab)
    await until(store, lab.id, "stopped")
    detail = (await store.events(lab.id))[-1].detail
    assert detail.startswith("bye[31m red ") and detail.endswith(" end")
    assert "\x00" not in detail and "\x1b" not in detail and "\ufffd" in detail
