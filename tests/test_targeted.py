"""Targeted sends: to one connection, to every connection of a user, and publishing to a
channel minus its sender; on every backend, and across workers on Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings, RedisBackend
from tests.apps.local_app import build_app
from tests.live import (
    connect,
    connect_identified,
    recv_json,
    recv_until,
    serve,
    wait_for_async_condition,
    wait_for_condition,
)


async def next_marked(ws: ClientConnection) -> Any:
    """The next message that is not a membership count."""
    return await recv_until(ws, lambda m: "count" not in m)


async def test_send_to_reaches_only_that_connection(server: str, hub: PubSubHub) -> None:
    first, first_id = await connect_identified(f"{server}/id/room")
    second, _ = await connect_identified(f"{server}/id/room")
    assert await hub.send_to(first_id, {"private": 1}) == 1
    assert await next_marked(first) == {"private": 1}
    await hub.publish("room", {"marker": True})
    # The other socket's next message is the marker: it never saw the private one.
    assert await next_marked(second) == {"marker": True}
    for ws in (first, second):
        await ws.close()


async def test_send_to_an_unknown_or_absent_connection_returns_zero(
    server: str, hub: PubSubHub
) -> None:
    ws, connection_id = await connect_identified(f"{server}/id/gone")
    await ws.close()
    await wait_for_async_condition(lambda: _no_members(hub, "gone"), 10)
    assert await hub.send_to(connection_id, {"late": True}) == 0
    assert await hub.send_to(f"{hub.fanout.worker_id}:no-such-socket", {"x": 1}) == 0
    assert await hub.send_to("no-such-worker:no-such-socket", {"x": 1}) == 0
    assert await hub.send_to("not-a-connection-id", {"x": 1}) == 0


async def _no_members(hub: PubSubHub, channel: str) -> bool:
    return await hub.count(channel) == 0


async def test_send_to_user_reaches_every_socket_of_that_user(server: str, hub: PubSubHub) -> None:
    alice = [
        (await connect_identified(f"{server}/id/a?user=alice"))[0],
        (await connect_identified(f"{server}/id/b?user=alice"))[0],
    ]
    bob, _ = await connect_identified(f"{server}/id/a?user=bob")
    assert await hub.send_to_user("alice", {"for": "alice"}) == 2
    for ws in alice:
        assert await next_marked(ws) == {"for": "alice"}
    await hub.publish("a", {"marker": True})
    assert await next_marked(bob) == {"marker": True}
    assert await hub.send_to_user("nobody", {"x": 1}) == 0
    for ws in [*alice, bob]:
        await ws.close()


async def test_publish_excluding_a_connection_skips_only_that_one(
    server: str, hub: PubSubHub
) -> None:
    sender, sender_id = await connect_identified(f"{server}/id/chat")
    other, _ = await connect_identified(f"{server}/id/chat")
    await hub.publish("chat", {"news": 1}, exclude=sender_id)
    assert await next_marked(other) == {"news": 1}
    await hub.publish("chat", {"marker": True})
    assert await next_marked(sender) == {"marker": True}
    assert await next_marked(other) == {"marker": True}
    # A client's own message, published with exclude_self, reaches everybody but itself.
    await sender.send('{"others": "hello"}')
    assert await next_marked(other) == {"from_other": "hello"}
    await hub.publish("chat", {"marker": 2})
    assert await next_marked(sender) == {"marker": 2}
    for ws in (sender, other):
        await ws.close()


async def test_publish_excluding_a_connection_on_a_history_channel(
    settings: PubSubSettings,
) -> None:
    async with (
        PubSubHub(settings=settings.with_changes(history_channels="log")) as hub,
        serve(build_app(hub)) as url,
    ):
        sender, sender_id = await connect_identified(f"{url}/id/log")
        other, _ = await connect_identified(f"{url}/id/log")
        await hub.publish("log", {"entry": 1}, exclude=sender_id)
        stored = await next_marked(other)
        assert stored["data"] == {"entry": 1}
        await hub.publish("log", {"entry": 2})
        assert (await next_marked(sender))["data"] == {"entry": 2}
        for ws in (sender, other):
            await ws.close()


async def test_a_burst_of_users_coming_and_going_leaves_no_entry_behind(
    server: str, hub: PubSubHub
) -> None:
    async def visit(i: int) -> None:
        ws = await connect(f"{server}/id/burst?user=u{i % 5}")
        await ws.close()

    await asyncio.gather(*(visit(i) for i in range(100)))
    await wait_for_condition(lambda: hub.fanout.local_connection_count == 0, 15)
    await wait_for_async_condition(lambda: _no_members(hub, "burst"), 15)
    for i in range(5):
        assert await hub.fanout.backend.presence_store.user_connections(f"u{i}") == frozenset()
        assert await hub.send_to_user(f"u{i}", {"x": 1}) == 0
    backend = hub.backend
    if isinstance(backend, RedisBackend):
        redis = aioredis.Redis.from_url(backend.redis_url)
        assert await redis.hlen(backend.keys.worker_connections(backend.worker_id)) == 0
        await redis.aclose()


# -- across workers on one Redis ---------------------------------------------------------


async def test_targeted_sends_reach_sockets_of_another_worker(
    two_hubs: tuple[PubSubHub, PubSubHub],
) -> None:
    here, there = two_hubs
    async with serve(build_app(here)) as url_here, serve(build_app(there)) as url_there:
        remote, remote_id = await connect_identified(f"{url_there}/id/x?user=dana")
        local, _ = await connect_identified(f"{url_here}/id/y?user=dana")
        assert await here.send_to(remote_id, {"direct": 1}) == 1
        assert await next_marked(remote) == {"direct": 1}
        assert await here.send_to_user("dana", {"all": 1}) == 2
        for ws in (remote, local):
            assert await next_marked(ws) == {"all": 1}
        # A publish excluding a socket of the other worker skips it there.
        peer, _ = await connect_identified(f"{url_here}/id/x")
        await here.publish("x", {"minus": 1}, exclude=remote_id)
        assert await next_marked(peer) == {"minus": 1}
        await there.publish("x", {"marker": True})
        assert await next_marked(remote) == {"marker": True}
        await remote.close()
        await wait_for_async_condition(lambda: _no_user(here, "dana", 1), 10)
        assert await here.send_to(remote_id, {"late": 1}) == 0
        assert await here.send_to_user("dana", {"one": 1}) == 1
        for ws in (local, peer):
            await ws.close()


async def _no_user(hub: PubSubHub, user: str, left: int = 0) -> bool:
    return len(await hub.fanout.backend.presence_store.user_connections(user)) == left


async def test_a_reaped_worker_leaves_no_user_entries(
    two_hubs: tuple[PubSubHub, PubSubHub], redis_client: aioredis.Redis
) -> None:
    here, there = two_hubs
    async with serve(build_app(there)) as url_there:
        ws, connection_id = await connect_identified(f"{url_there}/id/r?user=erin")
        assert await here.send_to_user("erin", {"hi": 1}) == 1
        backend = here.backend
        assert isinstance(backend, RedisBackend)
        # An operator reaps the other worker as if it were dead.
        assert await backend.reap(there.fanout.worker_id) == 1
        assert await backend.presence_store.user_connections("erin") == frozenset()
        assert await here.send_to(connection_id, {"x": 1}) == 0
        assert await here.send_to_user("erin", {"x": 1}) == 0
        keys = backend.keys
        assert await redis_client.smembers(keys.user_connections("erin")) == set()
        assert await redis_client.hlen(keys.worker_connections(there.fanout.worker_id)) == 0
        await ws.close()


async def test_user_entries_converge_after_they_were_lost(
    two_hubs: tuple[PubSubHub, PubSubHub], redis_client: aioredis.Redis
) -> None:
    here, there = two_hubs
    async with serve(build_app(there)) as url_there:
        ws, connection_id = await connect_identified(f"{url_there}/id/c?user=finn")
        backend = here.backend
        assert isinstance(backend, RedisBackend)
        keys = backend.keys
        # Redis loses the user's index and the worker's entries (e.g. a failover).
        await redis_client.delete(
            keys.user_connections("finn"), keys.worker_connections(there.fanout.worker_id)
        )
        assert await here.send_to_user("finn", {"x": 0}) == 0
        # The owning worker reconciles its own entries within a few heartbeats.
        await wait_for_async_condition(lambda: _no_user(here, "finn", 1), 15)
        assert await here.send_to(connection_id, {"back": 1}) == 1
        assert await next_marked(ws) == {"back": 1}
        await ws.close()


# -- two real uvicorn workers ------------------------------------------------------------


@pytest.mark.slow
async def test_targeted_sends_between_two_uvicorn_workers(two_workers: tuple[str, str]) -> None:
    a, b = two_workers
    on_b = await connect(b.replace("http://", "ws://") + "/id/lobby?user=gus")
    hello = await recv_until(on_b, lambda m: "me" in m)
    async with httpx.AsyncClient() as http:
        by_id = (await http.post(f"{a}/send/{hello['me']}", json={"direct": "a"})).json()
        assert by_id["sent"] == 1 and by_id["pid"] != hello["pid"]
        assert await next_marked(on_b) == {"direct": "a"}
        by_user = (await http.post(f"{a}/send_user/gus", json={"user": "a"})).json()
        assert by_user["sent"] == 1
        assert await recv_json(on_b) == {"user": "a"}
        nobody = (await http.post(f"{a}/send_user/nobody", json={"x": 1})).json()
        assert nobody["sent"] == 0
    await on_b.close()
