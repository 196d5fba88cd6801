"""A worker's mirror of a channel's membership converges on Redis by itself, even when the
events that keep it current were lost or their sequence numbers went back (a Sentinel
failover that lost writes the old primary had already published)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect, recv_until, serve


@pytest.fixture
async def url(redis_url: str, key_prefix: str) -> AsyncIterator[str]:
    """The counting app on Redis; a heartbeat every 0.2 s, so mirrors are checked as often."""
    settings = make_settings(key_prefix, redis_url, heartbeat_ttl=0.6)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as served:
        yield served


async def test_a_mirror_ahead_of_its_channels_counter_is_reloaded(
    url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    keys = RedisKeys(key_prefix)
    first = await connect(f"{url}/ws/regress")
    await recv_until(first, lambda m: m == {"count": 1})
    # The counter goes back, as after a failover to a replica that had not yet got the
    # last joins: the next events carry numbers this worker's mirror has already passed.
    await redis_client.set(keys.seq("regress"), 0)
    second = await connect(f"{url}/ws/regress")
    for ws in (first, second):
        await recv_until(ws, lambda m: m == {"count": 2}, timeout=5)
    await first.close()
    await second.close()


async def test_a_mirror_behind_its_channels_counter_catches_up(
    url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    keys = RedisKeys(key_prefix)
    ws = await connect(f"{url}/ws/missed")
    await recv_until(ws, lambda m: m == {"count": 1})
    # A join this worker never heard: in the set and counted, its event lost on the way.
    await redis_client.sadd(keys.members("missed"), "elsewhere:lost-event")
    await redis_client.incr(keys.seq("missed"))
    await recv_until(ws, lambda m: m == {"count": 2}, timeout=5)
    await ws.close()
