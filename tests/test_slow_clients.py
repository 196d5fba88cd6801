"""A client that stops reading never delays the others; the slow-client policy applies to it."""

from __future__ import annotations

import base64
import os

import pytest

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.frames import OutgoingFrame
from tests.apps.local_app import build_app
from tests.live import (
    close_code_of,
    connect,
    recv_until,
    serve,
    stalled_client,
    wait_for_async_condition,
)

# Incompressible, so permessage-deflate cannot shrink what fills the buffers.
BIG = base64.b64encode(os.urandom(150_000)).decode()
MESSAGES = 120


@pytest.mark.parametrize("policy", ["disconnect"])
async def test_client_that_never_reads_is_disconnected_and_others_get_everything(
    settings: PubSubSettings, policy: str
) -> None:
    hub = PubSubHub(settings=settings.with_changes(send_queue_size=8, slow_client_policy=policy))
    async with hub, serve(build_app(hub)) as url:
        slow = await stalled_client(f"{url}/ws/firehose")
        fast = await connect(f"{url}/ws/firehose", max_size=None)
        await recv_until(fast, lambda m: m == {"count": 2})

        # Each message reaches the fast client before the next is published, while the
        # slow one reads nothing: the stalled socket never holds up the others.
        others: list[dict[str, int]] = []
        for i in range(MESSAGES):
            await hub.publish("firehose", {"i": i, "pad": BIG})
            received = await recv_until(fast, lambda m: "i" in m, timeout=5, skipped=others)
            assert received["i"] == i
        # The slow client was dropped from the channel, cluster-wide.
        if {"count": 1} not in others:
            await recv_until(fast, lambda m: m == {"count": 1}, timeout=10)
        assert await hub.count("firehose") == 1
        # Once it reads again, it finds the reason it was closed.
        assert await close_code_of(slow, timeout=20) == CloseCode.POLICY_VIOLATION
        await fast.close()


async def test_a_stalled_client_overflowed_in_one_burst_is_still_closed(
    settings: PubSubSettings,
) -> None:
    # The whole overflow happens before the event loop runs again (as when one read of
    # the pub/sub link delivers many messages): the client's writer task is created and
    # the client evicted before that task ever ran. It must still close the socket.
    hub = PubSubHub(settings=settings.with_changes(send_queue_size=4))
    async with hub, serve(build_app(hub)) as url:
        slow = await stalled_client(f"{url}/ws/burst")
        await recv_until(slow, lambda m: m == {"count": 1})
        connection = hub.fanout.local_connections("burst")[0]
        frame = OutgoingFrame({"pad": BIG})
        offered = [connection.offer(frame) for _ in range(40)]
        assert offered.count(False) > 0  # evicted within the burst
        await wait_for_async_condition(lambda: _count_is(hub, "burst", 0), 10)
        assert await close_code_of(slow, timeout=20) == CloseCode.POLICY_VIOLATION


async def _count_is(hub: PubSubHub, channel: str, count: int) -> bool:
    return await hub.count(channel) == count


async def test_drop_oldest_keeps_the_slow_client_and_delivers_the_newest(
    settings: PubSubSettings,
) -> None:
    hub = PubSubHub(
        settings=settings.with_changes(send_queue_size=8, slow_client_policy="drop_oldest")
    )
    async with hub, serve(build_app(hub)) as url:
        slow = await stalled_client(f"{url}/ws/lossy")
        fast = await connect(f"{url}/ws/lossy", max_size=None)
        await recv_until(fast, lambda m: m == {"count": 2})
        for i in range(MESSAGES):
            await hub.publish("lossy", {"i": i, "pad": BIG})
            await recv_until(fast, lambda m, i=i: m.get("i") == i, timeout=5)
        connection = next(
            c for c in hub.fanout.local_connections("lossy") if c.dropped_messages > 0
        )
        assert connection.dropped_messages > 0
        # The slow client is still a member and, reading again, ends with the newest message.
        assert await hub.count("lossy") == 2
        last = await recv_until(slow, lambda m: m.get("i") == MESSAGES - 1, timeout=30)
        assert last["i"] == MESSAGES - 1
        for ws in (slow, fast):
            await ws.close()
