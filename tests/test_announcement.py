"""The workers' settings announcement and the outside publishers that follow it (issue 27).

Outside publishers configured as the docs advise (the Redis URL and the key prefix, no
``PUBSUB_HISTORY_CHANNELS``) learn from the workers' announcement in Redis which channels
keep history. Redis that restarts empty loses that announcement: the workers announce it
again by themselves, and a publisher that finds none refuses to publish rather than
publishing plain what a history channel should have stored.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import (
    ConfigurationError,
    PublishError,
    PubSubHub,
    PubSubSettings,
    RedisPublisher,
    SettingsNotAnnouncedError,
    publish_sync,
)
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import (
    connect,
    reconnect_signal,
    recv_until,
    serve,
    wait_for_async_condition,
    wait_for_condition,
)
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


async def published_anything(admin: aioredis.Redis) -> set[str]:
    stats = await admin.info("commandstats")
    return {"cmdstat_publish", "cmdstat_evalsha", "cmdstat_eval", "cmdstat_spublish"} & set(stats)


async def test_a_publisher_refuses_when_a_running_worker_never_announces(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    # A worker that beats but announces nothing (an older version, say): the publisher
    # waits a heartbeat's TTL for the announcement, then says what to do.
    keys = RedisKeys(key_prefix)
    await admin.set(keys.heartbeat("old-worker"), "1", px=60_000)
    await admin.sadd(keys.workers, "old-worker")
    outside = make_settings(key_prefix, owned_redis.url.replace("://", "://user:hunter2@"))
    started = asyncio.get_running_loop().time()
    with pytest.raises(SettingsNotAnnouncedError) as refused:
        async with RedisPublisher(owned_redis.url, settings=outside) as publisher:
            await publisher.publish("news", {"n": 1})
    waited = asyncio.get_running_loop().time() - started
    assert outside.heartbeat_ttl <= waited < outside.heartbeat_ttl + 2
    message = str(refused.value)
    assert "PUBSUB_HISTORY_CHANNELS" in message and owned_redis.url.split("//")[1] in message
    with pytest.raises(SettingsNotAnnouncedError, match="PUBSUB_HISTORY_CHANNELS="):
        await asyncio.to_thread(publish_sync, owned_redis.url, "news", {"n": 2}, settings=outside)
    assert issubclass(SettingsNotAnnouncedError, PublishError)  # caught where Redis down is
    assert not await published_anything(admin)
    # A publisher that names the history channels itself needs no announcement.
    own = outside.with_changes(history_channels="news")
    async with RedisPublisher(owned_redis.url, settings=own) as publisher:
        await publisher.publish("news", {"n": 3})
    assert await admin.xlen(keys.history("news")) == 1


async def test_an_explicitly_empty_history_setting_needs_no_announcement(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    keys = RedisKeys(key_prefix)
    await admin.set(keys.heartbeat("old-worker"), "1", px=60_000)  # not announcing
    await admin.sadd(keys.workers, "old-worker")
    environ = {"PUBSUB_KEY_PREFIX": key_prefix, "PUBSUB_HISTORY_CHANNELS": ""}
    outside = PubSubSettings.from_env(environ)
    async with asyncio.timeout(outside.heartbeat_ttl / 2):  # no waiting for an announcement
        workers = await asyncio.to_thread(
            publish_sync, owned_redis.url, "news", {"n": 1}, settings=outside
        )
    assert workers == 0
    assert await admin.exists(keys.history("news")) == 0


async def test_a_publisher_where_no_worker_runs_publishes_without_history(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    # The original example before its first client (its hub starts on first use), or a
    # cluster not deployed yet: nothing announced, no worker alive. Nobody can receive it.
    outside = make_settings(key_prefix, redis_url)
    workers = await asyncio.to_thread(publish_sync, redis_url, "news", {"n": 1}, settings=outside)
    assert workers == 0
    assert await redis_client.exists(RedisKeys(key_prefix).history("news")) == 0


async def test_a_publisher_waits_for_running_workers_to_announce_again(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, redis_url, history_channels="news")
    outside = make_settings(key_prefix, redis_url)
    async with PubSubHub(settings=settings):
        await redis_client.delete(RedisKeys(key_prefix).settings)  # a flush, an eviction
        async with RedisPublisher(redis_url, settings=outside) as publisher:
            await publisher.publish("news", {"n": 1})
    assert await redis_client.xlen(RedisKeys(key_prefix).history("news")) == 1


async def test_an_explicitly_empty_history_setting_against_workers_with_history_is_an_error(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, redis_url, history_channels="news")
    outside = make_settings(key_prefix, redis_url, history_channels="")
    async with PubSubHub(settings=settings):
        with pytest.raises(ConfigurationError, match="PUBSUB_HISTORY_CHANNELS=''"):
            await asyncio.to_thread(publish_sync, redis_url, "news", {"n": 1}, settings=outside)


class NumberedPublishing:
    """Publishes ``{"n": 1}``, ``{"n": 2}``, ... on ``news`` with ``publish_sync`` from a
    thread, as a script or a job queue would, and notes which publishes succeeded."""

    def __init__(self, url: str, settings: PubSubSettings) -> None:
        self.url = url
        self.settings = settings
        self.results: list[tuple[int, bool]] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                publish_sync(self.url, "news", {"n": n}, settings=self.settings)
            except PublishError:
                self.results.append((n, False))
                self._stop.wait(0.02)  # a retry's backoff
            else:
                self.results.append((n, True))

    @contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._run, name="numbered-publishing")
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(10)

    @property
    def failed(self) -> bool:
        return any(not ok for _, ok in self.results)

    def succeeded_after_first_failure(self) -> list[int]:
        first = next(i for i, (_, ok) in enumerate(self.results) if not ok)
        return [n for n, ok in self.results[first:] if ok]


async def test_a_long_lived_publisher_stores_again_after_an_empty_redis_restart(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    outside = make_settings(key_prefix, owned_redis.url)
    async with (
        PubSubHub(settings=settings) as hub,
        serve(build_app(hub)) as url,
        RedisPublisher(owned_redis.url, settings=outside, follow_interval=0.05) as publisher,
    ):
        reconnected = reconnect_signal(hub)
        ws = await connect(f"{url}/ws/news")
        await publisher.publish("news", {"n": 0})
        seen = await recv_until(ws, stored_or_gap)
        assert seen["data"] == {"n": 0}
        await ws.close()
        await asyncio.to_thread(owned_redis.restart)
        await asyncio.wait_for(reconnected.wait(), 15)
        # The publisher reads the workers' settings again (or is refused while it cannot).
        async with asyncio.timeout(15):
            for n in range(1, 21):
                while True:
                    try:
                        await publisher.publish("news", {"n": n})
                    except PublishError:
                        await asyncio.sleep(0.02)  # a retry's backoff
                    else:
                        break
        back = await connect(f"{url}/ws/news?since={seen['id']}")
        assert await resumed(back, 20) == ["gap", *range(1, 21)]
        await back.close()


async def test_a_resume_across_an_empty_restart_misses_nothing_an_outside_publisher_published(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """Publishing goes on through an empty restart of Redis. What Redis held is lost (the
    resuming client is told of the gap); every publish that succeeded after the first that
    failed (Redis away, or its settings not yet announced again) reaches the client."""
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    outside = make_settings(key_prefix, owned_redis.url)
    publishing = NumberedPublishing(owned_redis.url, outside)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/news")
        with publishing.running():
            seen = await recv_until(ws, stored_or_gap)
            await ws.close()
            await asyncio.to_thread(owned_redis.stop)
            await wait_for_condition(lambda: publishing.failed, 10)
            await asyncio.to_thread(owned_redis.start)
            await wait_for_condition(
                lambda: len(publishing.succeeded_after_first_failure()) >= 20, 20
            )
        expected = publishing.succeeded_after_first_failure()
        back = await connect(f"{url}/ws/news?since={seen['id']}")
        assert await resumed(back, expected[-1]) == ["gap", *expected]
        await back.close()
