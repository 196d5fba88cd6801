"""Shutdown while background work runs: a worker that stops leaves nothing registered in
Redis, and stopping always ends, even when a heartbeat is under way at that moment."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from fastapi_pubsub_cluster.tasks import TaskSupervisor
from tests.conftest import make_settings
from tests.live import wait_for_async_condition
from tools.redis_servers import OwnedRedisServer


async def test_a_worker_stopping_during_a_redis_stall_leaves_no_instance_behind(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """Stopping sends its leave while Redis stalls; a heartbeat that fires meanwhile must
    not reach Redis after it (re-registering the worker that just left)."""
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=0.6)
    admin = aioredis.Redis.from_url(owned_redis.url)
    probe = aioredis.Redis.from_url(owned_redis.url, socket_timeout=0.05)

    async def stalled() -> bool:
        try:
            await probe.ping()
        except aioredis.RedisError:
            await probe.connection_pool.disconnect()
            return True
        return False

    try:
        hub = PubSubHub(settings=settings)
        await hub.start()
        stall = owned_redis.debug_sleep(0.5)  # longer than a heartbeat's period (0.2 s)
        await wait_for_async_condition(stalled, 5)
        await asyncio.wait_for(hub.stop(), 10)
        await asyncio.to_thread(stall.join)
        left = await admin.smembers(RedisKeys(key_prefix).workers)
        assert left == set(), f"registered after a clean stop: {left}"
    finally:
        await probe.aclose()
        await admin.aclose()


async def test_closing_ends_a_task_that_swallowed_its_first_cancellation() -> None:
    """Some library calls swallow a cancellation that arrives at the wrong moment; the
    supervisor must still end the task rather than wait for it forever."""
    supervisor = TaskSupervisor("test")
    swallowed = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # as a library that catches too much would
        await asyncio.sleep(3600)

    task = supervisor.spawn(stubborn())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(supervisor.close(), 5)
    assert swallowed.is_set() and task.cancelled()
