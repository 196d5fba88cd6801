"""History that survives a failover: with ``history_min_replicas``, a history publish is
acknowledged only once that many replicas have it, so a replica promoted while the old
primary still takes writes (Sentinel's failover window) holds every acknowledged message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PublishError, PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.conftest import make_settings
from tests.live import wait_for_async_condition
from tools.redis_servers import OwnedRedisServer


@pytest.fixture
async def primary_and_replica() -> AsyncIterator[tuple[OwnedRedisServer, OwnedRedisServer]]:
    """A primary and a replica following it, both owned by the test."""
    primary = OwnedRedisServer()
    primary.start()
    replica = OwnedRedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    admin = aioredis.Redis.from_url(replica.url)

    async def following() -> bool:
        info = await admin.info("replication")
        return bool(info.get("master_link_status") == "up")

    try:
        await wait_for_async_condition(following, 15)
        yield primary, replica
    finally:
        await admin.aclose()
        replica.close()
        primary.close()


async def stored_payload_count(server: OwnedRedisServer, key_prefix: str, channel: str) -> int:
    client = aioredis.Redis.from_url(server.url)
    try:
        return len(await client.xrange(RedisKeys(key_prefix).history(channel)))
    finally:
        await client.aclose()


async def test_an_acknowledged_history_publish_is_on_the_replica_and_an_unreplicated_one_fails(
    primary_and_replica: tuple[OwnedRedisServer, OwnedRedisServer], key_prefix: str
) -> None:
    primary, replica = primary_and_replica
    settings = make_settings(
        key_prefix, primary.url, history_channels="kept", history_min_replicas=1
    )
    async with PubSubHub(settings=settings) as hub:
        await hub.publish("kept", {"n": 1})
        # Acknowledged: the replica has it already, not eventually.
        assert await stored_payload_count(replica, key_prefix, "kept") == 1
        # The replica is promoted (as a Sentinel does); the old primary still takes
        # writes, which nobody replicates: a history publish there must not be
        # acknowledged, as the old primary will drop it when it is demoted.
        promoted = aioredis.Redis.from_url(replica.url)
        await promoted.execute_command("REPLICAOF", "NO", "ONE")
        await promoted.aclose()
        with pytest.raises(PublishError, match="replica"):
            await hub.publish("kept", {"n": 2})
        # Plain channels promise at most once: they are not held to it.
        await hub.publish("plain", {"n": 3})


async def test_history_publishes_fail_with_no_replica_to_confirm_them(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """Asked for replicas the server does not have: every history publish would fail, so
    the first one says why (quickly: within the publish time limit)."""
    settings = make_settings(
        key_prefix, owned_redis.url, history_channels="kept", history_min_replicas=1
    )
    async with PubSubHub(settings=settings) as hub:
        with pytest.raises(PublishError, match="1 replica"):
            await hub.publish("kept", {"n": 1})
