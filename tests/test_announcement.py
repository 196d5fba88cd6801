"""The workers' settings announcement and the outside publishers that follow it (issue 27).

Outside publishers configured as the docs advise (the Redis URL and the key prefix, no
``PUBSUB_HISTORY_CHANNELS``) learn from the workers' announcement in Redis which channels
keep history. Redis that restarts empty loses that announcement: the workers announce it
again by themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.conftest import make_settings
from tests.live import reconnect_signal, recv_until, wait_for_async_condition
from tools.redis_servers import OwnedRedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def admin(owned_redis: OwnedRedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(owned_redis.url)
    yield client
    await client.aclose()


async def announced(admin: aioredis.Redis, key_prefix: str) -> dict[str, str]:
    """What the workers announce under ``key_prefix`` now ({} while Redis is away)."""
    try:
        raw = await admin.hgetall(RedisKeys(key_prefix).settings)
    except RedisConnectionError:
        return {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def stored_or_gap(message: Any) -> bool:
    return isinstance(message, dict) and ("id" in message or "history_gap" in message)


async def resumed(ws: ClientConnection, last: int) -> list[Any]:
    """What a resuming client receives on a history channel: "gap" for a gap notice, else
    the ``n`` of each stored message, until ``n == last`` (or 5 s of nothing more)."""
    got: list[Any] = []
    while not got or got[-1] != last:
        try:
            message = await recv_until(ws, stored_or_gap, timeout=5)
        except TimeoutError:
            break
        got.append("gap" if "history_gap" in message else message["data"]["n"])
    return got


async def test_the_workers_announce_their_settings_again_once_redis_lost_them(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    async with PubSubHub(settings=settings) as hub:
        reconnected = reconnect_signal(hub)
        ours = await announced(admin, key_prefix)
        assert ours["history_channels"] == "news"

        async def restored() -> bool:
            return await announced(admin, key_prefix) == ours

        # Deleted while the worker's link stays up (a flush, an eviction): back within a
        # heartbeat or so.
        await admin.delete(RedisKeys(key_prefix).settings)
        await wait_for_async_condition(restored, settings.heartbeat_ttl)
        # Lost with everything else in a restart without persistence: back once the link is.
        await asyncio.to_thread(owned_redis.restart)
        await asyncio.wait_for(reconnected.wait(), 15)
        await wait_for_async_condition(restored, settings.heartbeat_ttl)
