"""Behaviour every connection manager shares, checked over real sockets on each backend."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster import (
    InvalidChannelError,
    MessageTooLargeError,
    PubSubHub,
    PubSubSettings,
    RedisBackend,
)
from fastapi_pubsub_cluster.errors import CloseCode
from tests.apps.local_app import CountingSocket, build_app
from tests.live import (
    close_code_of,
    connect,
    last_message_when_quiet,
    recv_json,
    recv_until,
    serve,
    wait_for_async_condition,
    wait_for_condition,
)


async def test_every_client_sees_the_count_after_joins_and_leaves(server: str) -> None:
    clients = [await connect(f"{server}/ws/room") for _ in range(3)]
    for ws in clients:
        await recv_until(ws, lambda m: m == {"count": 3})
    await clients.pop().close()
    for ws in clients:
        await recv_until(ws, lambda m: m == {"count": 2})
    for ws in clients:
        await ws.close()


async def test_get_returns_every_connection_id_of_the_channel(server: str, hub: PubSubHub) -> None:
    clients = [await connect(f"{server}/ws/ids") for _ in range(2)]
    for ws in clients:
        await recv_until(ws, lambda m: m == {"count": 2})
    local_ids = {c.id for c in hub.fanout.local_connections("ids")}
    assert hub.get("ids") == local_ids
    assert await hub.members("ids") == local_ids
    assert await hub.count("ids") == 2
    for ws in clients:
        await ws.close()


async def test_publish_reaches_only_the_clients_of_that_channel(
    server: str, hub: PubSubHub
) -> None:
    in_a = [await connect(f"{server}/ws/a") for _ in range(2)]
    in_b = await connect(f"{server}/ws/b")
    await recv_until(in_b, lambda m: m == {"count": 1})
    for ws in in_a:
        await recv_until(ws, lambda m: m == {"count": 2})
    await hub.publish("a", {"news": 1})
    await hub.publish("b", {"marker": True})
    for ws in in_a:
        assert await recv_json(ws) == {"news": 1}
    # Channel b's next message is its own marker: it never saw channel a's news.
    assert await recv_json(in_b) == {"marker": True}
    for ws in [*in_a, in_b]:
        await ws.close()


async def test_generate_runs_at_most_once_per_event_not_once_per_client(server: str) -> None:
    CountingSocket.generate_calls = 0
    clients = []
    for expected in range(1, 6):
        clients.append(await connect(f"{server}/ws/gen"))
        for ws in clients:
            await recv_until(ws, lambda m, n=expected: m == {"count": n})
    # Five joins: at most five runs, although 1+2+3+4+5 = 15 deliveries were made.
    assert 1 <= CountingSocket.generate_calls <= 5
    for ws in clients:
        await ws.close()


async def test_burst_of_200_clients_leaves_no_entry_behind(server: str, hub: PubSubHub) -> None:
    async def visit() -> None:
        ws = await connect(f"{server}/ws/burst")
        await ws.close()

    await asyncio.gather(*(visit() for _ in range(200)))
    await wait_for_condition(lambda: hub.fanout.local_connection_count == 0, 15)
    await wait_for_condition(lambda: not hub.get("burst"), 15)
    # The leaves go to Redis in batches after the sockets are gone locally: wait for them.
    await wait_for_async_condition(lambda: _count_is(hub, "burst", 0), 15)
    backend = hub.backend
    if isinstance(backend, RedisBackend):
        redis = aioredis.Redis.from_url(backend.redis_url)
        assert await redis.hlen(backend.keys.owners("burst")) == 0
        assert await redis.scard(backend.keys.members("burst")) == 0
        await redis.aclose()


async def _count_is(hub: PubSubHub, channel: str, expected: int) -> bool:
    return await hub.count(channel) == expected


async def test_a_client_that_vanishes_does_not_stop_delivery_to_others(
    server: str, hub: PubSubHub
) -> None:
    clients = [await connect(f"{server}/ws/vanish") for _ in range(4)]
    for ws in clients:
        await recv_until(ws, lambda m: m == {"count": 4})
    # Drop one client's TCP connection without a close handshake.
    clients[1].transport.abort()
    survivors = [clients[0], clients[2], clients[3]]
    for i in range(20):
        await hub.publish("vanish", {"i": i})
    for ws in survivors:
        received = [await recv_until(ws, lambda m: "i" in m) for _ in range(20)]
        assert [m["i"] for m in received] == list(range(20))
    for ws in survivors:
        await ws.close()


async def test_binary_msgpack_frame_reaches_on_message(server: str) -> None:
    ws = await connect(f"{server}/ws/binary")
    await recv_until(ws, lambda m: m == {"count": 1})
    await ws.send(msgpack.packb({"hello": "binary"}))
    assert await recv_until(ws, lambda m: "echo" in m) == {"echo": {"hello": "binary"}}
    # The loop survived the binary frame: a text frame still works.
    await ws.send('{"hello": "text"}')
    assert await recv_until(ws, lambda m: "echo" in m) == {"echo": {"hello": "text"}}
    await ws.close()


async def test_msgpack_wire_format_on_request(server: str, hub: PubSubHub) -> None:
    ws = await connect(f"{server}/ws/packed?format=msgpack")
    frame = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(frame, bytes)
    assert msgpack.unpackb(frame) == {"count": 1}
    await hub.publish("packed", {"blob": b"\x00\x01"})
    assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5)) == {"blob": b"\x00\x01"}
    await ws.close()


async def test_malformed_json_frame_closes_1007_and_others_keep_receiving(
    server: str, hub: PubSubHub
) -> None:
    bad, good = await connect(f"{server}/ws/bad"), await connect(f"{server}/ws/bad")
    await recv_until(good, lambda m: m == {"count": 2})
    await bad.send("{not json")
    assert await close_code_of(bad) == CloseCode.INVALID_PAYLOAD
    await recv_until(good, lambda m: m == {"count": 1})
    await hub.publish("bad", {"still": "here"})
    assert await recv_until(good, lambda m: "still" in m) == {"still": "here"}
    await good.close()


async def test_malformed_msgpack_frame_closes_1007(server: str) -> None:
    ws = await connect(f"{server}/ws/badbin")
    await recv_until(ws, lambda m: m == {"count": 1})
    await ws.send(b"\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_oversized_frame_closes_1009(hub: PubSubHub) -> None:
    small = PubSubHub(settings=hub.settings.with_changes(max_message_bytes=1000))
    async with small, serve(build_app(small)) as url:
        ws = await connect(f"{url}/ws/big")
        await recv_until(ws, lambda m: m == {"count": 1})
        await ws.send('"' + "x" * 2000 + '"')
        assert await close_code_of(ws) == CloseCode.MESSAGE_TOO_BIG
        await wait_for_condition(lambda: small.fanout.local_connection_count == 0, 5)


async def test_invalid_channel_id_closes_1008_and_registers_nothing(
    server: str, hub: PubSubHub
) -> None:
    ws = await connect(f"{server}/ws/{'x' * 300}")
    assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
    ws = await connect(f"{server}/ws/bad%20channel%21")
    assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
    assert hub.fanout.local_connection_count == 0


async def test_authorization_denied_closes_1008_and_registers_nothing(
    server: str, hub: PubSubHub
) -> None:
    denied = await connect(f"{server}/guarded/vip?token=wrong")
    assert await close_code_of(denied) == CloseCode.POLICY_VIOLATION
    assert await hub.count("vip") == 0
    allowed = await connect(f"{server}/guarded/vip?token=secret")
    assert await recv_until(allowed, lambda m: "count" in m) == {"count": 1}
    await allowed.close()


async def test_cancelled_run_still_unregisters(server: str, hub: PubSubHub) -> None:
    ws = await connect(f"{server}/cancelled/deadline")
    await recv_until(ws, lambda m: m == {"count": 1})
    # The route cancels run() after 0.5 s while the client is still connected.
    await wait_for_condition(lambda: hub.fanout.local_connection_count == 0, 5)
    await wait_for_condition(lambda: not hub.get("deadline"), 5)
    assert await hub.count("deadline") == 0
    await ws.close()


async def test_publish_rejects_invalid_channel_and_oversized_payload(hub: PubSubHub) -> None:
    with pytest.raises(InvalidChannelError):
        await hub.publish("no spaces allowed", {})
    with pytest.raises(MessageTooLargeError):
        await hub.publish("big", {"blob": "x" * (hub.settings.max_message_bytes + 1)})


async def test_last_message_carries_final_count_after_concurrent_joins_and_leaves(
    server: str,
) -> None:
    clients = await asyncio.gather(*(connect(f"{server}/ws/race") for _ in range(20)))
    await asyncio.gather(*(recv_until(ws, lambda m: m == {"count": 20}) for ws in clients))
    leaving, staying = clients[:10], clients[10:]
    await asyncio.gather(*(ws.close() for ws in leaving))
    finals = await asyncio.gather(*(last_message_when_quiet(ws, 1.0) for ws in staying))
    assert finals == [{"count": 10}] * 10
    for ws in staying:
        await ws.close()


async def test_shutdown_closes_sockets_with_1001(settings: PubSubSettings) -> None:
    hub = PubSubHub(settings=settings)
    async with hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/bye")
        await recv_until(ws, lambda m: m == {"count": 1})
        await hub.stop()
        assert await close_code_of(ws) == CloseCode.GOING_AWAY
        assert hub.fanout.local_connection_count == 0


async def test_a_message_published_right_after_the_handshake_is_delivered(
    server: str, hub: PubSubHub
) -> None:
    # The socket joins before it is accepted: nothing published after the client sees the
    # handshake complete can be missed, even before its first message arrives.
    for i in range(10):
        ws = await connect(f"{server}/ws/eager-{i}")
        await hub.publish(f"eager-{i}", {"first": i})
        assert await recv_until(ws, lambda m: "first" in m) == {"first": i}
        await ws.close()
