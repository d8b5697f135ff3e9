"""The hub's client follows a lab's events live, through the backend's stream."""

import asyncio
import time

from spawner.client import BackendClient, BackendError
from tests.helpers.api import lab_request


async def test_client_follows_a_lab_from_accepted_to_stopped(backend, no_leftover_processes):
    client = BackendClient(backend.url, backend.tokens["hub"])
    try:
        lab = await client.create(lab_request("alice"), "alice")
        states = []
        async for event in client.follow(lab["id"], "alice"):
            states.append(event["state"])
            if event["state"] == "running":
                current = await client.get(lab["id"], "alice")
                assert current["url"].startswith("http://127.0.0.1:")
                await client.delete(lab["id"], "alice")
        assert states[0] == "accepted"
        assert "running" in states
        assert states[-2:] == ["stopping", "stopped"]
    finally:
        await client.aclose()


async def test_a_state_change_reaches_the_stream_within_a_second(backend, no_leftover_processes):
    """Event-driven, not polled: the stop's first event arrives at once."""
    client = BackendClient(backend.url, backend.tokens["hub"])
    try:
        lab = await client.create(lab_request("alice"), "alice")
        delays = []
        asked = 0.0
        async for event in client.follow(lab["id"], "alice"):
            if event["state"] == "running":
                asked = time.monotonic()
                asyncio.get_running_loop().call_later(
                    0, lambda: asyncio.ensure_future(client.delete(lab["id"], "alice"))
                )
            elif event["state"] == "stopping":
                delays.append(time.monotonic() - asked)
        assert delays and delays[0] < 1.0, delays
    finally:
        await client.aclose()


async def test_client_follow_of_another_users_lab_is_refused(backend, no_leftover_processes):
    client = BackendClient(backend.url, backend.tokens["hub"])
    try:
        lab = await client.create(lab_request("alice"), "alice")
        try:
            async for _ in client.follow(lab["id"], "bob"):
                raise AssertionError("bob must not see alice's events")
        except BackendError as exc:
            assert exc.status == 404
        await client.delete(lab["id"], "alice")
        async for _ in client.follow(lab["id"], "alice"):
            pass
    finally:
        await client.aclose()


async def test_client_resumes_after_a_backend_restart(
    start_backend, settings, no_leftover_processes
):
    first = await start_backend(settings)
    port = int(first.url.rsplit(":", 1)[1])
    client = BackendClient(first.url, first.tokens["hub"])
    try:
        lab = await client.create(lab_request("alice"), "alice")
        seen = []

        async def follow() -> None:
            async for event in client.follow(lab["id"], "alice"):
                seen.append(event["seq"])

        follower = asyncio.create_task(follow())
        while (await client.get(lab["id"], "alice"))["state"] != "running":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await first.stop()
        await start_backend(settings, port=port)
        await client.delete(lab["id"], "alice")
        await asyncio.wait_for(follower, 20)
        assert seen == sorted(set(seen)), seen  # no event twice, none out of order
        assert seen == list(range(1, len(seen) + 1)), seen  # and none missed
    finally:
        await client.aclose()
