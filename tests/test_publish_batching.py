"""Many concurrent publishes on one worker: batched into pipelines, none fails for want of a
connection, each caller keeps its time limit and its PublishError."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.errors import PublishError
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect, recv_until, serve
from tools.redis_servers import OwnedRedisServer

CALLERS = 200
EACH = 3


@pytest.fixture
async def redis_hub(
    redis_url: str, key_prefix: str, redis_client: object
) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=make_settings(key_prefix, redis_url)) as hub:
        yield hub


async def test_two_hundred_concurrent_callers_all_publish_and_every_message_arrives_in_order(
    redis_hub: PubSubHub,
) -> None:
    async with serve(build_app(redis_hub)) as url:
        ws = await connect(f"{url}/ws/busy", max_size=None)
        await recv_until(ws, lambda m: m == {"count": 1})

        async def caller(index: int) -> None:
            for n in range(EACH):
                await redis_hub.publish("busy", {"caller": index, "n": n})

        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
        seen: dict[int, list[int]] = {}
        async with asyncio.timeout(20):
            while sum(len(v) for v in seen.values()) < CALLERS * EACH:
                message = json.loads(await ws.recv())
                if "caller" in message:
                    seen.setdefault(message["caller"], []).append(message["n"])
        # Every publication arrived once, and each caller's in the order it published them.
        assert seen == {i: list(range(EACH)) for i in range(CALLERS)}
        await ws.close()


async def test_each_waiting_caller_gets_publish_error_within_its_time_limit_when_redis_stalls(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, probe_interval=0)
    async with PubSubHub(settings=settings) as hub:
        await hub.publish("stall", {"before": True})
        owned_redis.pause()
        try:
            limit = settings.redis_timeout * 2
            async with asyncio.timeout(limit + 5):  # the limit, plus scheduling slack
                results = await asyncio.gather(
                    *(hub.publish("stall", {"i": i}) for i in range(50)),
                    return_exceptions=True,
                )
        finally:
            owned_redis.resume()
        assert all(isinstance(r, PublishError) for r in results), results[:3]
        # Redis answers again: so do publishes.
        await hub.publish("stall", {"after": True})
