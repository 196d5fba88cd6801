"""Server-side subscribers: Python code reading a channel's messages, published on any
worker, bounded like a client; on every backend and across workers on Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fastapi_pubsub_cluster import (
    PubSubHub,
    PubSubSettings,
    RedisBackend,
    SubscriberOverflowError,
)
from tests.apps.local_app import build_app
from tests.live import connect, recv_until, serve, wait_for_async_condition, wait_for_condition


async def test_a_subscriber_receives_what_is_published(hub: PubSubHub) -> None:
    async with hub.subscribe("news") as messages:
        await hub.publish("news", {"headline": 1})
        await hub.publish("other", {"not": "this"})
        await hub.publish("news", {"headline": 2})
        received = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
    assert received == [{"headline": 1}, {"headline": 2}]


async def test_leaving_the_block_ends_the_iteration(hub: PubSubHub) -> None:
    async with hub.subscribe("news") as messages:
        await hub.publish("news", {"n": 1})
        # Heard through the worker's link (on Redis, after publish() returns): queued unread.
        await wait_for_condition(lambda: messages.pending == 1, 5)
    # Left: what was queued can still be read, then the iteration ends.
    assert [message async for message in messages] == [{"n": 1}]


async def test_a_history_channel_yields_ids_and_data(settings: PubSubSettings) -> None:
    hub = PubSubHub(settings=settings.with_changes(history_channels="log"))
    async with hub, hub.subscribe("log") as messages:
        await hub.publish("log", {"entry": 1})
        message = await asyncio.wait_for(anext(messages), 5)
    assert message["data"] == {"entry": 1}
    assert isinstance(message["id"], str) and "-" in message["id"]


async def test_a_subscriber_is_not_a_member_and_clients_still_receive(hub: PubSubHub) -> None:
    async with serve(build_app(hub)) as url, hub.subscribe("room") as messages:
        ws = await connect(f"{url}/ws/room")
        assert await recv_until(ws, lambda m: "count" in m) == {"count": 1}
        assert await hub.count("room") == 1
        await hub.publish("room", {"both": True})
        assert await recv_until(ws, lambda m: "both" in m) == {"both": True}
        # Only published messages reach subscribers, not the membership counts.
        assert await asyncio.wait_for(anext(messages), 5) == {"both": True}
        await ws.close()


async def test_a_subscriber_that_never_reads_drops_its_oldest_and_stalls_nobody(
    hub: PubSubHub,
) -> None:
    async with serve(build_app(hub)) as url, hub.subscribe("flood", max_queue=10) as idle:
        ws = await connect(f"{url}/ws/flood")
        await recv_until(ws, lambda m: "count" in m)
        for i in range(200):
            await hub.publish("flood", {"i": i})
        received = [(await recv_until(ws, lambda m: "i" in m))["i"] for _ in range(200)]
        assert received == list(range(200))
        assert idle.pending == 10
        assert idle.dropped == 190
        # What is left is the newest ten.
        assert [(await anext(idle))["i"] for _ in range(10)] == list(range(190, 200))
        await ws.close()


async def test_the_error_policy_ends_the_iteration_with_an_error(hub: PubSubHub) -> None:
    async with hub.subscribe("flood", max_queue=5, policy="error") as messages:
        for i in range(5):
            await hub.publish("flood", {"i": i})
        await wait_for_condition(lambda: messages.pending == 5, 5)
        await hub.publish("flood", {"i": 5})
        await wait_for_condition(lambda: messages.pending == 0, 5)  # overflowed: cleared
        with pytest.raises(SubscriberOverflowError):
            await asyncio.wait_for(anext(messages), 5)


async def test_stopping_the_hub_ends_the_iteration(settings: PubSubSettings) -> None:
    hub = PubSubHub(settings=settings)
    await hub.start()
    async with hub.subscribe("news") as messages:
        reader = asyncio.ensure_future(anext(messages))
        await hub.stop()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 5)


# -- across workers on one Redis ---------------------------------------------------------


def subscribed(hub: PubSubHub) -> list[str]:
    backend = hub.backend
    assert isinstance(backend, RedisBackend)
    return backend.subscribed_channels


async def test_a_subscriber_hears_messages_published_on_another_worker(
    two_hubs: tuple[PubSubHub, PubSubHub],
) -> None:
    publisher, listener = two_hubs
    assert "remote" not in subscribed(listener)
    async with listener.subscribe("remote") as messages:
        assert subscribed(listener).count("remote") == 1
        await publisher.publish("remote", {"from": "elsewhere"})
        assert await asyncio.wait_for(anext(messages), 5) == {"from": "elsewhere"}
    # The worker stops hearing the channel once nothing needs it.
    assert "remote" not in subscribed(listener)


async def test_subscribers_and_sockets_share_one_subscription(
    two_hubs: tuple[PubSubHub, PubSubHub],
) -> None:
    publisher, listener = two_hubs
    async with serve(build_app(listener)) as url:
        ws = await connect(f"{url}/ws/shared")
        await recv_until(ws, lambda m: "count" in m)
        async with listener.subscribe("shared") as first, listener.subscribe("shared") as second:
            assert subscribed(listener).count("shared") == 1
            await publisher.publish("shared", {"n": 1})
            assert await asyncio.wait_for(anext(first), 5) == {"n": 1}
            assert await asyncio.wait_for(anext(second), 5) == {"n": 1}
            assert await recv_until(ws, lambda m: "n" in m) == {"n": 1}
        # The socket still needs the channel: still heard, still delivered.
        assert "shared" in subscribed(listener)
        await publisher.publish("shared", {"n": 2})
        assert await recv_until(ws, lambda m: "n" in m) == {"n": 2}
        await ws.close()
        await wait_for_async_condition(lambda: _not_subscribed(listener, "shared"), 10)
        # Only the subscriber needs it now: the last socket leaving does not drop it.
        async with listener.subscribe("shared") as messages:
            ws = await connect(f"{url}/ws/shared")
            await recv_until(ws, lambda m: "count" in m)
            await ws.close()
            await wait_for_async_condition(lambda: _no_members(listener, "shared"), 10)
            await publisher.publish("shared", {"n": 3})
            assert await asyncio.wait_for(anext(messages), 5) == {"n": 3}


async def _not_subscribed(hub: PubSubHub, channel: str) -> bool:
    return channel not in subscribed(hub)


async def _no_members(hub: PubSubHub, channel: str) -> bool:
    return await hub.count(channel) == 0


async def test_many_concurrent_first_subscribers_all_hear(
    two_hubs: tuple[PubSubHub, PubSubHub],
) -> None:
    publisher, listener = two_hubs

    async def first_message() -> object:
        async with listener.subscribe("race") as messages:
            ready.release()
            return await asyncio.wait_for(anext(messages), 5)

    ready = asyncio.Semaphore(0)
    readers = [asyncio.ensure_future(first_message()) for _ in range(10)]
    for _ in readers:
        await asyncio.wait_for(ready.acquire(), 5)
    await publisher.publish("race", {"all": True})
    assert await asyncio.gather(*readers) == [{"all": True}] * 10
    assert "race" not in subscribed(listener)


# -- two real uvicorn workers ------------------------------------------------------------


@pytest.mark.slow
async def test_a_subscriber_on_one_uvicorn_worker_hears_another(
    two_workers: tuple[str, str],
) -> None:
    a, b = two_workers
    watcher = await connect(b.replace("http://", "ws://") + "/ws/feed")
    await recv_until(watcher, lambda m: "count" in m)
    async with httpx.AsyncClient(timeout=20) as http:
        waiting = asyncio.ensure_future(http.post(f"{a}/subscribe/feed", json={"timeout": 10}))
        # Worker A says (on the channel) once its subscriber is in place.
        subscribed_on = await recv_until(watcher, lambda m: "subscribed" in m)
        published = (await http.post(f"{b}/publish/feed", json={"via": "b"})).json()
        reply = (await waiting).json()
    assert reply["message"] == {"via": "b"}
    assert reply["pid"] == subscribed_on["subscribed"] != published["pid"]
    await watcher.close()


async def test_readers_of_a_message_share_one_frame_encoded_once(hub: PubSubHub) -> None:
    # What server-sent event streams rely on: every stream on this worker writes the same
    # frame's cached JSON, whatever the number of streams or channels per stream.
    async with (
        hub.fanout.subscribe(["news", "sport"]) as first,
        hub.fanout.subscribe(["news"]) as second,
    ):
        await hub.publish("news", {"n": 1})
        (channel_a, frame_a), (channel_b, frame_b) = await asyncio.wait_for(
            asyncio.gather(first.next_frame(), second.next_frame()), 5
        )
        assert channel_a == channel_b == "news"
        assert frame_a is frame_b
        assert frame_a.tagged("news").text is frame_b.tagged("news").text
        await hub.publish("sport", {"n": 2})
        channel, frame = await asyncio.wait_for(first.next_frame(), 5)
        assert (channel, frame.payload) == ("sport", {"n": 2})
