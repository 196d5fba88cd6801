"""A worker on Sentinel follows the primary the Sentinel names, whole: its commands and its
pub/sub link end on the same server, while the old primary still answers as a primary
(the Sentinel has not demoted it yet; a manual failover leaves it so for seconds).

Split between the two, the link's probe (published through the command connections) goes
to one server while the link listens on the other: every probe finds the link deaf, and
each renewal moves the link to the new primary, where the next probe, through a command
connection still on the old one, finds it deaf again (the Sentinel-failover fault case
logged that some forty times and missed its convergence limit).

The Sentinel is moved to the replica by hand (promoted, then monitored instead of the old
primary), so the old primary stays a primary for as long as the test needs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisBackend
from tests.conftest import make_settings
from tests.live import wait_for_async_condition, wait_for_condition
from tools.redis_servers import OwnedRedisServer, OwnedSentinel

#: Probes often, so that a split shows within a few seconds.
PROBE_INTERVAL = 0.2


async def _clients_of(server: aioredis.Redis, prefix: str) -> list[dict[str, Any]]:
    return [c for c in await server.client_list() if str(c.get("name", "")).startswith(prefix)]


async def _publishes_on(server: aioredis.Redis) -> int:
    stats = await server.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


@pytest.mark.parametrize("how", ["a-burst-opens-a-connection", "the-link-is-dropped"])
async def test_a_worker_follows_the_new_primary_whole_while_the_old_one_is_not_demoted(
    how: str,
    sentinel_setup: tuple[OwnedRedisServer, OwnedRedisServer, OwnedSentinel],
    key_prefix: str,
) -> None:
    primary, replica, sentinel = sentinel_setup
    watcher = aioredis.Redis(port=sentinel.port)
    old = aioredis.Redis.from_url(primary.url)
    new = aioredis.Redis.from_url(replica.url)

    async def replica_known() -> bool:
        replicas = await watcher.sentinel_slaves(sentinel.service)
        return any(r.get("master-link-status") == "ok" for r in replicas)

    await wait_for_async_condition(replica_known, 20)
    settings = make_settings(
        key_prefix, sentinel.url, probe_interval=PROBE_INTERVAL, probe_timeout=0.5
    )
    hub = PubSubHub(settings=settings)
    on_new = PubSubHub(settings=make_settings(key_prefix, replica.url))
    try:
        async with hub, hub.subscribe("ha") as messages:
            # A few command connections, all on the primary.
            await asyncio.gather(*(hub.members(f"warm-{i}") for i in range(3)))
            assert len(await _clients_of(old, key_prefix)) >= 3

            # The Sentinel names the replica; nobody demotes the old primary.
            await new.execute_command("REPLICAOF", "NO", "ONE")
            await watcher.execute_command("SENTINEL", "REMOVE", sentinel.service)
            await watcher.execute_command(
                "SENTINEL", "MONITOR", sentinel.service, "127.0.0.1", replica.port, 1
            )
            address = await watcher.sentinel_get_master_addr_by_name(sentinel.service)
            assert address is not None and int(address[1]) == replica.port

            if how == "a-burst-opens-a-connection":
                # More commands at once than idle connections: new ones go to the new
                # primary while those in use wait on the old one (paused for less than
                # a command's time limit, so that they end there, not in a timeout).
                await old.execute_command("CLIENT", "PAUSE", 500)
                await asyncio.gather(*(hub.members(f"burst-{i}") for i in range(8)))
            else:
                assert await old.client_kill_filter(_type="pubsub") >= 1

            async def followed() -> bool:
                return not await _clients_of(old, key_prefix)

            await wait_for_async_condition(followed, 10)
            # It hears what is published on the new primary.
            await on_new.start()
            received: list[Any] = []

            async def read() -> None:
                async for message in messages:
                    received.append(message)

            reader = asyncio.create_task(read())
            try:
                async with asyncio.timeout(10):
                    attempt = 0
                    while not received:
                        attempt += 1
                        await on_new.publish("ha", {"attempt": attempt})
                        try:
                            await wait_for_condition(lambda: bool(received), 0.5)
                        except AssertionError:
                            continue
            finally:
                reader.cancel()
            # And its probes find the link hearing from now on: at least ten more go by
            # (each a PUBLISH on the new primary) without one more renewal.
            backend = hub.backend
            assert isinstance(backend, RedisBackend)
            deaf = backend.deaf_link_count
            published = await _publishes_on(new)

            async def probes_went_by() -> bool:
                return await _publishes_on(new) >= published + 10

            await wait_for_async_condition(probes_went_by, 20 * PROBE_INTERVAL + 5)
            print(f"\n{how}: link found deaf {backend.deaf_link_count} time(s)")
            assert backend.deaf_link_count == deaf
            assert deaf <= 1
    finally:
        await on_new.stop()
        for client in (watcher, old, new):
            await client.aclose()
