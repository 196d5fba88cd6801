"""Targeted sends, server-side subscribers and presence metadata on a Redis Cluster: the
directory and the metadata live in their own slots, topics are shard channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.crc import key_slot

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import (
    connect_identified,
    recv_until,
    serve,
    wait_for_async_condition,
    wait_for_condition,
)
from tools.redis_servers import OwnedRedisCluster

pytestmark = pytest.mark.slow


def test_a_workers_inbox_and_directory_share_one_slot_and_metadata_its_channels(
    key_prefix: str,
) -> None:
    keys = RedisKeys(key_prefix)
    worker = {key_slot(k.encode()) for k in (keys.inbox("w"), keys.worker_connections("w"))}
    assert len(worker) == 1
    assert key_slot(keys.meta("x").encode()) == key_slot(keys.members("x").encode())


@pytest.fixture
async def two_hubs(
    redis_cluster: OwnedRedisCluster, key_prefix: str
) -> AsyncIterator[tuple[PubSubHub, PubSubHub]]:
    settings = make_settings(key_prefix, redis_cluster.url)
    async with PubSubHub(settings=settings) as first, PubSubHub(settings=settings) as second:
        yield first, second


async def test_targeted_sends_subscribers_and_metadata_across_workers_on_a_cluster(
    two_hubs: tuple[PubSubHub, PubSubHub],
) -> None:
    here, there = two_hubs
    async with serve(build_app(there)) as url_there:
        sockets = [
            await connect_identified(f"{url_there}/id/c{i}?user=max&name=n{i}") for i in range(4)
        ]
        first, first_id = sockets[0]
        assert await here.send_to(first_id, {"direct": 1}) == 1
        assert await recv_until(first, lambda m: "direct" in m) == {"direct": 1}
        assert await here.send_to_user("max", {"all": 1}) == 4
        for ws, _ in sockets:
            assert await recv_until(ws, lambda m: "all" in m) == {"all": 1}
        assert await here.presence("c1") == {sockets[1][1]: {"name": "n1"}}
        async with here.subscribe("c2") as messages:
            await there.publish("c2", {"to": "subscriber"})
            assert await asyncio.wait_for(anext(messages), 5) == {"to": "subscriber"}
        for ws, _ in sockets:
            await ws.close()
        await wait_for_condition(lambda: there.fanout.local_connection_count == 0, 10)
        # Gone from the directory once its leave lands: nothing is sent, and 0 says so.
        await wait_for_async_condition(lambda: _nothing_sent(here, first_id), 10)
        await wait_for_async_condition(lambda: _no_connections(here, "max"), 10)


async def _nothing_sent(hub: PubSubHub, connection_id: str) -> bool:
    return await hub.send_to(connection_id, {"late": 1}) == 0


async def _no_connections(hub: PubSubHub, user_id: str) -> bool:
    return await hub.send_to_user(user_id, {"late": 1}) == 0
