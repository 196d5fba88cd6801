"""Redis Cluster: channels spread over three shards with sharded pub/sub, one slot each."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot

from fastapi_pubsub_cluster import PubSubHub, RedisBackend, RedisPublisher
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from fastapi_pubsub_cluster.errors import ConfigurationError
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import (
    connect,
    join_in_a_burst,
    reconnect_signal,
    recv_until,
    serve,
    wait_for_async_condition,
)
from tools.processes import uvicorn_process
from tools.redis_servers import OwnedRedisCluster

pytestmark = pytest.mark.slow

CHANNELS = [f"shard-test-{i}" for i in range(8)]


@pytest.fixture
async def cluster_hub(
    redis_cluster: OwnedRedisCluster, key_prefix: str
) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=make_settings(key_prefix, redis_cluster.url)) as hub:
        yield hub


def node_of(redis_cluster: OwnedRedisCluster, key: str) -> str:
    client = SyncRedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        return str(client.get_node_from_key(key).name)
    finally:
        client.close()


def test_a_channels_keys_and_topic_share_one_slot(key_prefix: str) -> None:
    keys = RedisKeys(key_prefix)
    names = [keys.members("x"), keys.owners("x"), keys.seq("x"), keys.topic("x")]
    names.append(keys.history("x"))
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert key_slot(keys.members("x").encode()) != key_slot(keys.members("y").encode())


async def test_channels_on_every_shard_fan_out_with_one_link_per_shard(
    cluster_hub: PubSubHub, redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    keys = RedisKeys(key_prefix)
    shards = {node_of(redis_cluster, keys.topic(channel)) for channel in CHANNELS}
    assert len(shards) == 3  # the channels really are spread over the three masters
    async with serve(build_app(cluster_hub)) as url:
        clients = {
            channel: [await connect(f"{url}/ws/{channel}") for _ in range(2)]
            for channel in CHANNELS
        }
        for group in clients.values():
            for ws in group:
                await recv_until(ws, lambda m: m == {"count": 2})
        for channel in CHANNELS:
            await cluster_hub.publish(channel, {"to": channel})
        for channel, group in clients.items():
            for ws in group:
                assert await recv_until(ws, lambda m: "to" in m) == {"to": channel}
        backend = cluster_hub.backend
        assert isinstance(backend, RedisBackend) and backend.is_cluster
        assert backend.link_count == 3  # one sharded pub/sub link per master, not per socket
        for channel in CHANNELS:
            assert await cluster_hub.count(channel) == 2
        for group in clients.values():
            for ws in group:
                await ws.close()


async def test_two_workers_on_a_cluster_see_each_other(
    redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, redis_cluster.url)
    async with (
        PubSubHub(settings=settings) as hub_a,
        PubSubHub(settings=settings) as hub_b,
        serve(build_app(hub_a)) as url_a,
        serve(build_app(hub_b)) as url_b,
    ):
        on_a = await connect(f"{url_a}/ws/{CHANNELS[0]}")
        on_b = await connect(f"{url_b}/ws/{CHANNELS[0]}")
        for ws in (on_a, on_b):
            await recv_until(ws, lambda m: m == {"count": 2})
        async with RedisPublisher(redis_cluster.url, settings=settings) as outside:
            assert await outside.publish(CHANNELS[0], {"from": "script"}) == 2
        for ws in (on_a, on_b):
            assert await recv_until(ws, lambda m: "from" in m) == {"from": "script"}
        await on_b.close()
        await recv_until(on_a, lambda m: m == {"count": 1})
        await on_a.close()


async def test_history_resume_on_a_cluster(
    redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, redis_cluster.url, history_channels="shard-test-.*")
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/{CHANNELS[1]}")
        await hub.publish(CHANNELS[1], {"n": 0})
        first = await recv_until(ws, lambda m: "id" in m)
        await ws.close()
        for n in range(1, 21):
            await hub.publish(CHANNELS[1], {"n": n})
        back = await connect(f"{url}/ws/{CHANNELS[1]}?since={first['id']}")
        missed = [await recv_until(back, lambda m: "id" in m) for _ in range(20)]
        assert [m["data"]["n"] for m in missed] == list(range(1, 21))
        await back.close()


async def test_history_min_replicas_is_refused_on_a_cluster(
    redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    """WAIT counts one node's replicas; a cluster's streams live on many: said at startup."""
    settings = make_settings(
        key_prefix, redis_cluster.url, history_channels="shard-test-.*", history_min_replicas=1
    )
    hub = PubSubHub(settings=settings)
    with pytest.raises(ConfigurationError, match="PUBSUB_HISTORY_MIN_REPLICAS"):
        await hub.start()
    await hub.stop()


async def test_killed_worker_is_reaped_on_a_cluster(
    redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    env = {
        "PUBSUB_REDIS_URL": redis_cluster.url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HEARTBEAT_TTL": "2",
    }
    app = "tests.apps.cluster_app:app"
    with uvicorn_process(app, env) as survivor, uvicorn_process(app, env) as doomed:
        base_s = survivor.replace("http://", "ws://")
        base_d = doomed.replace("http://", "ws://")
        watchers = [await connect(f"{base_s}/ws/{channel}") for channel in CHANNELS[:3]]
        victims = [await connect(f"{base_d}/ws/{channel}") for channel in CHANNELS[:3]]
        for ws in watchers:
            await recv_until(ws, lambda m: m == {"count": 2})
        async with httpx.AsyncClient() as http:
            pid = int((await http.get(f"{doomed}/healthz", timeout=5)).json()["pid"])
        os.kill(pid, signal.SIGKILL)
        await asyncio.gather(
            *(recv_until(ws, lambda m: m == {"count": 1}, timeout=8) for ws in watchers)
        )
        for ws in victims:
            ws.transport.abort()
        for ws in watchers:
            await ws.close()


async def test_a_shard_link_resubscribes_every_topic_after_it_was_lost(
    cluster_hub: PubSubHub, redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    """A link carries the topics of several slots of its shard; after a loss it subscribes
    to them again one by one (fault matrix, issue 13: one SSUBSCRIBE for them all was
    refused with CROSSSLOT, and the link renewed itself forever without hearing anything)."""
    keys = RedisKeys(key_prefix)
    by_node: dict[str, list[str]] = {}
    for channel in CHANNELS:
        by_node.setdefault(node_of(redis_cluster, keys.topic(channel)), []).append(channel)
    node, channels = next((n, c) for n, c in by_node.items() if len(c) >= 2)
    reconnected = reconnect_signal(cluster_hub)
    async with serve(build_app(cluster_hub)) as url:
        clients = [await connect(f"{url}/ws/{channel}") for channel in channels]
        for ws in clients:
            await recv_until(ws, lambda m: m == {"count": 1})
        host, port = node.rsplit(":", 1)
        killer = aioredis.Redis(host=host, port=int(port))
        assert await killer.client_kill_filter(_type="pubsub") >= 1
        await killer.aclose()
        await asyncio.wait_for(reconnected.wait(), 10)
        for channel, ws in zip(channels, clients, strict=True):
            await cluster_hub.publish(channel, {"to": channel})
            assert await recv_until(ws, lambda m: "to" in m, timeout=5) == {"to": channel}
        for ws in clients:
            await ws.close()


async def test_one_socket_in_channels_on_every_shard(
    cluster_hub: PubSubHub, redis_cluster: OwnedRedisCluster, key_prefix: str
) -> None:
    async with serve(build_app(cluster_hub)) as url:
        ws = await connect(f"{url}/rooms/{CHANNELS[0]}?also={','.join(CHANNELS[1:])}")
        me = (await recv_until(ws, lambda m: "me" in m))["me"]
        await recv_until(ws, lambda m: m.get("event") == "joined" and m["channel"] == CHANNELS[-1])
        for channel in CHANNELS[1:]:
            assert await cluster_hub.members(channel) == {me}
            await cluster_hub.publish(channel, {"to": channel})
            tagged = await recv_until(ws, lambda m, c=channel: m.get("data") == {"to": c})
            assert tagged["channel"] == channel
        backend = cluster_hub.backend
        assert isinstance(backend, RedisBackend) and backend.link_count == 3
        # A user's sends still reach it once (the directory is not touched by further joins).
        assert await cluster_hub.send_to(me, {"direct": 1}) == 1
        assert await recv_until(ws, lambda m: m == {"direct": 1}) == {"direct": 1}
        await ws.close()
        for channel in CHANNELS:
            await wait_for_async_condition(lambda c=channel: _empty(cluster_hub, c), 10)


async def _empty(hub: PubSubHub, channel: str) -> bool:
    return await hub.count(channel) == 0


async def test_a_burst_of_joins_on_a_cluster_all_succeed(
    cluster_hub: PubSubHub, redis_cluster: OwnedRedisCluster
) -> None:
    # Joins on a cluster also write the connection directory on other shards; a burst of
    # them opens many connections at once, and none may fail.
    async with serve(build_app(cluster_hub)) as url:
        await join_in_a_burst(url, cluster_hub)
