"""What only the Redis manager does: foreign payloads, outside publishers, Redis costs, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import (
    BasePubSubWebSocket,
    PublishError,
    PubSubHub,
    RedisBackend,
    RedisCredentials,
    RedisPublisher,
    publish_sync,
)
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from fastapi_pubsub_cluster.envelope import Envelope, EventKind, encode_envelope
from fastapi_pubsub_cluster.errors import CloseCode
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, reconnect_signal, recv_json, recv_until, serve
from tools.redis_servers import OwnedRedisServer


@pytest.fixture
async def redis_hub(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=make_settings(key_prefix, redis_url)) as hub:
        yield hub


@pytest.fixture
async def owned_hub(owned_redis: OwnedRedisServer, key_prefix: str) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=make_settings(key_prefix, owned_redis.url)) as hub:
        yield hub


async def test_foreign_payloads_on_the_topic_are_ignored_and_delivery_goes_on(
    redis_hub: PubSubHub, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with serve(build_app(redis_hub)) as url:
        ws = await connect(f"{url}/ws/feed")
        await recv_until(ws, lambda m: m == {"count": 1})
        topic = RedisKeys(key_prefix).topic("feed")
        for garbage in (b"\xc1\xc1", b"plain text", msgpack.packb({"not": "an envelope"})):
            await redis_client.publish(topic, garbage)
        await redis_hub.publish("feed", {"real": True})
        # The client's next message is the real one: the garbage was dropped, not delivered.
        assert await recv_json(ws) == {"real": True}
        await ws.close()


async def test_a_late_duplicate_of_a_publication_is_delivered_once(
    redis_hub: PubSubHub, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with serve(build_app(redis_hub)) as url:
        ws = await connect(f"{url}/ws/late")
        await recv_until(ws, lambda m: m == {"count": 1})
        topic = RedisKeys(key_prefix).topic("late")
        # A publication as a publisher retrying after a timeout sends it: the same id twice,
        # here with other publications between the two.
        retried = encode_envelope(
            Envelope(EventKind.MESSAGE, "late", "a-publisher", "publication-1", 0, {"n": 0})
        )
        await redis_client.publish(topic, retried)
        for n in range(1, 50):
            await redis_hub.publish("late", {"n": n})
        await redis_client.publish(topic, retried)
        await redis_hub.publish("late", {"n": "last"})
        seen: list[Any] = []
        await recv_until(ws, lambda m: m == {"n": "last"}, skipped=seen)
        assert seen == [{"n": n} for n in range(50)]
        await ws.close()


async def test_a_plain_script_can_publish_with_only_redis(
    redis_hub: PubSubHub, redis_url: str
) -> None:
    async with serve(build_app(redis_hub)) as url:
        ws = await connect(f"{url}/ws/jobs")
        await recv_until(ws, lambda m: m == {"count": 1})
        async with RedisPublisher(redis_url, settings=redis_hub.settings) as publisher:
            assert await publisher.publish("jobs", {"from": "async script"}) == 1
        assert await recv_json(ws) == {"from": "async script"}
        workers = await asyncio.to_thread(
            publish_sync, redis_url, "jobs", {"from": "sync script"}, settings=redis_hub.settings
        )
        assert workers == 1
        assert await recv_json(ws) == {"from": "sync script"}
        await ws.close()


async def test_one_broadcast_costs_one_publish_whatever_the_number_of_clients(
    owned_hub: PubSubHub, owned_redis: OwnedRedisServer
) -> None:
    stats = aioredis.Redis.from_url(owned_redis.url)

    async def publish_calls() -> int:
        info = await stats.info("commandstats")
        return int(info.get("cmdstat_publish", {}).get("calls", 0))

    async with serve(build_app(owned_hub)) as url:
        clients = [await connect(f"{url}/ws/wide") for _ in range(40)]
        await asyncio.gather(*(recv_until(ws, lambda m: m == {"count": 40}) for ws in clients))
        before = await publish_calls()
        await owned_hub.publish("wide", {"to": "everyone"})
        await asyncio.gather(*(recv_until(ws, lambda m: "to" in m) for ws in clients))
        assert await publish_calls() - before == 1
        # One subscription for the channel on this worker, not one per socket.
        numsub = await stats.pubsub_numsub(RedisKeys(owned_hub.settings.key_prefix).topic("wide"))
        assert numsub[0][1] == 1
        await asyncio.gather(*(ws.close() for ws in clients))
    await stats.aclose()


async def test_publish_while_redis_is_down_fails_fast_with_a_clear_error(
    owned_hub: PubSubHub, owned_redis: OwnedRedisServer
) -> None:
    owned_redis.stop()
    started = time.monotonic()
    with pytest.raises(PublishError, match="Redis unavailable"):
        async with asyncio.timeout(10):  # "never hangs": fail the test rather than wait
            await owned_hub.publish("anything", {"x": 1})
    assert time.monotonic() - started < 2 * owned_hub.settings.redis_timeout + 1


async def test_socket_joining_while_redis_is_down_is_closed_with_1013(
    owned_hub: PubSubHub, owned_redis: OwnedRedisServer
) -> None:
    async with serve(build_app(owned_hub)) as url:
        owned_redis.stop()
        ws = await connect(f"{url}/ws/later")
        assert await close_code_of(ws) == CloseCode.TRY_AGAIN_LATER
        assert owned_hub.fanout.local_connection_count == 0


async def test_presence_is_registered_again_after_a_redis_restart(
    owned_hub: PubSubHub, owned_redis: OwnedRedisServer
) -> None:
    backend = owned_hub.backend
    assert isinstance(backend, RedisBackend)
    reconnected = reconnect_signal(owned_hub)
    async with serve(build_app(owned_hub)) as url:
        clients = [await connect(f"{url}/ws/durable") for _ in range(3)]
        await asyncio.gather(*(recv_until(ws, lambda m: m == {"count": 3}) for ws in clients))
        owned_redis.restart()  # every key is gone
        await asyncio.wait_for(reconnected.wait(), 10)
        assert await owned_hub.count("durable") == 3
        assert backend.reconnect_count == 1
        await owned_hub.publish("durable", {"back": True})
        for ws in clients:
            await recv_until(ws, lambda m: m == {"back": True})
            await ws.close()


class OriginalStyleSocket(BasePubSubWebSocket):
    async def generate_object_to_send(self) -> dict[str, int]:
        return {"num_connected_clients": len(self.connection_manager.get(self.websocket_id))}


@pytest.mark.parametrize("form", ["dict", "object", "url"])
async def test_original_style_redis_credentials_select_the_redis_manager(
    owned_redis: OwnedRedisServer, form: str
) -> None:
    credentials: object = {
        "dict": {"host": "127.0.0.1", "port": owned_redis.port, "db": 0},
        "object": RedisCredentials(host="127.0.0.1", port=owned_redis.port),
        "url": owned_redis.url,
    }[form]
    app = FastAPI()
    sockets: list[OriginalStyleSocket] = []

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        ssw = OriginalStyleSocket(websocket, "seed", credentials)  # type: ignore[arg-type]
        sockets.append(ssw)
        await ssw.run()

    async with serve(app) as url:
        ws = await connect(f"{url}/ws")
        assert await recv_json(ws) == {"num_connected_clients": 1}
        assert isinstance(sockets[0].hub.backend, RedisBackend)
        stats = aioredis.Redis.from_url(owned_redis.url)
        assert await stats.scard(RedisKeys("pubsub").members("seed")) == 1
        await stats.aclose()
        await ws.close()
        await sockets[0].hub.stop()
