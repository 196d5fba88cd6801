"""Operations: deaf links, reconnect hooks, Sentinel failover, bounded Redis connections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import (
    BasePubSubWebSocket,
    PublishError,
    PubSubHub,
    RedisBackend,
    RedisPublisher,
)
from fastapi_pubsub_cluster.backends.redis import MAX_REDIS_CONNECTIONS, RedisKeys
from fastapi_pubsub_cluster.errors import CloseCode
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import (
    close_code_of,
    connect,
    join_in_a_burst,
    recv_until,
    serve,
    wait_for_async_condition,
)
from tests.tcp_proxy import DeafeningProxy
from tools.processes import uvicorn_process
from tools.redis_servers import OwnedRedisServer


async def publish_until_received(
    redis_url: str, hub: PubSubHub, ws: Any, channel: str, timeout: float
) -> float:
    """Publish from outside the worker until the client gets it; returns the seconds taken."""
    started = time.monotonic()
    async with RedisPublisher(redis_url, settings=hub.settings) as outside:
        async with asyncio.timeout(timeout):
            attempt = 0
            while True:
                attempt += 1
                await outside.publish(channel, {"attempt": attempt})
                try:
                    await recv_until(ws, lambda m: "attempt" in m, timeout=0.3)
                    return time.monotonic() - started
                except TimeoutError:
                    continue


async def test_deaf_subscriber_link_is_detected_and_renewed(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    proxy = DeafeningProxy("127.0.0.1", owned_redis.port)
    async with proxy.running():
        settings = make_settings(
            key_prefix, f"redis://127.0.0.1:{proxy.port}/0", probe_interval=0.5, probe_timeout=0.5
        )
        hub = PubSubHub(settings=settings)
        direct = aioredis.Redis.from_url(owned_redis.url)
        async with hub, serve(build_app(hub)) as url:
            backend = hub.backend
            assert isinstance(backend, RedisBackend)
            ws = await connect(f"{url}/ws/quiet")
            await recv_until(ws, lambda m: m == {"count": 1})
            assert proxy.deafen_subscribers() == 1
            # Redis still lists the subscription, yet nothing reaches the worker any more.
            assert (await direct.pubsub_numsub(RedisKeys(key_prefix).topic("quiet")))[0][1] == 1
            seconds = await publish_until_received(owned_redis.url, hub, ws, "quiet", timeout=10)
            print(f"deaf link detected and deliveries resumed in {seconds:.2f}s")
            assert backend.deaf_link_count >= 1
            assert backend.reconnect_count >= 1
            await ws.close()
        await direct.aclose()


class ResyncingSocket(BasePubSubWebSocket):
    resyncs = 0

    async def generate_object_to_send(self) -> dict[str, int]:
        return {"count": len(self.connection_manager.get(self.channel_id))}

    async def on_reconnect(self) -> None:
        type(self).resyncs += 1
        await self.send_json({"resync": True})


@pytest.fixture
async def owned_hub_factory(owned_redis: OwnedRedisServer, key_prefix: str) -> AsyncIterator[Any]:
    hubs: list[PubSubHub] = []

    def make(**changes: Any) -> PubSubHub:
        hub = PubSubHub(settings=make_settings(key_prefix, owned_redis.url, **changes))
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()


def resync_app(hub: PubSubHub) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{channel}")
    async def endpoint(websocket: WebSocket, channel: str) -> None:
        await ResyncingSocket(websocket, channel, hub=hub).run()

    return app


async def test_socket_on_reconnect_hook_runs_after_every_resubscribe(
    owned_redis: OwnedRedisServer, owned_hub_factory: Any
) -> None:
    hub = owned_hub_factory()
    ResyncingSocket.resyncs = 0
    async with hub, serve(resync_app(hub)) as url:
        clients = [await connect(f"{url}/ws/sync") for _ in range(2)]
        for ws in clients:
            await recv_until(ws, lambda m: m == {"count": 2})
        for round_number in (1, 2):
            owned_redis.restart()
            for ws in clients:
                assert await recv_until(ws, lambda m: "resync" in m) == {"resync": True}
            assert ResyncingSocket.resyncs == 2 * round_number
        for ws in clients:
            await ws.close()


async def test_option_closes_clients_with_1012_after_the_link_was_lost(
    owned_redis: OwnedRedisServer, owned_hub_factory: Any
) -> None:
    hub = owned_hub_factory(close_clients_on_reconnect=True)
    async with hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/restartme")
        await recv_until(ws, lambda m: m == {"count": 1})
        owned_redis.restart()
        assert await close_code_of(ws) == CloseCode.SERVICE_RESTART
        # The browser reconnects and resyncs: a new socket works at once.
        again = await connect(f"{url}/ws/restartme")
        await recv_until(again, lambda m: m == {"count": 1})
        await again.close()


async def test_sentinel_failover_broadcasts_resume_on_the_new_primary(
    sentinel_setup: Any, key_prefix: str
) -> None:
    _primary, replica, sentinel = sentinel_setup
    watcher = aioredis.Redis.from_url(f"redis://127.0.0.1:{sentinel.port}/0")

    async def replica_known() -> bool:
        replicas = await watcher.sentinel_slaves(sentinel.service)
        return any(r.get("master-link-status") == "ok" for r in replicas)

    await wait_for_async_condition(replica_known, 20)
    hub = PubSubHub(settings=make_settings(key_prefix, sentinel.url))
    async with hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/ha")
        await recv_until(ws, lambda m: m == {"count": 1})
        started = time.monotonic()
        await watcher.execute_command("SENTINEL", "FAILOVER", sentinel.service)

        async def replica_promoted() -> bool:
            address = await watcher.sentinel_get_master_addr_by_name(sentinel.service)
            return address is not None and int(address[1]) == replica.port

        await wait_for_async_condition(replica_promoted, 20)
        async with asyncio.timeout(15):
            attempt = 0
            while True:
                attempt += 1
                try:
                    await hub.publish("ha", {"attempt": attempt})
                    await recv_until(ws, lambda m: "attempt" in m, timeout=0.5)
                    break
                except (TimeoutError, PublishError):
                    continue
        print(f"broadcasts resumed {time.monotonic() - started:.2f}s after SENTINEL FAILOVER")
        # Presence lives on in the promoted replica.
        assert await hub.count("ha") == 1
        await ws.close()
    await watcher.aclose()


def redis_connections_by_worker(client_list: list[dict[str, Any]], prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in client_list:
        name = str(entry.get("name", ""))
        if name.startswith(f"{prefix}:"):
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.slow
async def test_redis_connections_per_worker_stay_a_small_constant(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    env = {
        "PUBSUB_REDIS_URL": owned_redis.url,
        "PUBSUB_KEY_PREFIX": key_prefix,
    }
    admin = aioredis.Redis.from_url(owned_redis.url)
    app = "tests.apps.cluster_app:app"
    with uvicorn_process(app, env) as a, uvicorn_process(app, env) as b:
        channels = [f"room-{i}" for i in range(20)]

        async def churn(total: int) -> None:
            bases = [a, b]
            semaphore = asyncio.Semaphore(50)

            async def visit(i: int) -> None:
                async with semaphore:
                    base = bases[i % 2].replace("http://", "ws://")
                    ws = await connect(f"{base}/ws/{channels[i % len(channels)]}")
                    await recv_until(ws, lambda m: "count" in m)
                    await ws.send(json.dumps(i))  # the worker publishes it: lone or batched
                    await recv_until(ws, lambda m: m.get("echo") == i)
                    await ws.close()

            await asyncio.gather(*(visit(i) for i in range(total)))

        await churn(100)  # warm up: pools grow to what the load needs
        before = redis_connections_by_worker(await admin.client_list(), key_prefix)
        await churn(2000)
        async with httpx.AsyncClient() as http:
            for base in (a, b):

                async def drained(base: str = base) -> bool:
                    health = (await http.get(f"{base}/healthz")).json()
                    return bool(health["local_connections"] == 0)

                await wait_for_async_condition(drained, 20)
        after = redis_connections_by_worker(await admin.client_list(), key_prefix)
        print(f"Redis connections per worker: before {before}, after 2,000 sockets {after}")
        assert len(after) == 2
        # Whatever the number of sockets: the command pool (its connections open as load
        # needs them, up to its bound), the pub/sub link, the publish path's own connection,
        # the heartbeat's (up to 2) and the joins and leaves' own.
        bound = MAX_REDIS_CONNECTIONS + 5
        assert all(count <= bound for count in [*before.values(), *after.values()]), after
    await admin.aclose()


async def test_presence_comes_back_after_a_stalled_worker_was_reaped(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=1.0)
    admin = aioredis.Redis.from_url(owned_redis.url)
    keys = RedisKeys(key_prefix)
    async with (
        PubSubHub(settings=settings) as stalled,
        PubSubHub(settings=settings) as peer,
        serve(build_app(stalled)) as url_stalled,
        serve(build_app(peer)) as url_peer,
    ):
        assert isinstance(peer.backend, RedisBackend)
        on_stalled = [await connect(f"{url_stalled}/ws/lapse") for _ in range(2)]
        watcher = await connect(f"{url_peer}/ws/lapse")
        await recv_until(watcher, lambda m: m == {"count": 3})
        # As if the worker's loop had stalled past its TTL and the peer had reaped it.
        assert await peer.backend.reap(stalled.backend.worker_id) == 2
        await recv_until(watcher, lambda m: m == {"count": 1})
        # Its next heartbeat finds its record gone and registers its sockets again.
        await recv_until(watcher, lambda m: m == {"count": 3}, timeout=5)
        assert await admin.scard(keys.members("lapse")) == 3
        assert isinstance(stalled.backend, RedisBackend) and stalled.backend.instance
        assert await admin.exists(keys.heartbeat(stalled.backend.instance))
        for ws in [*on_stalled, watcher]:
            await ws.close()
    await admin.aclose()


async def test_a_burst_of_joins_through_sentinel_all_succeed(
    sentinel_setup: Any, key_prefix: str
) -> None:
    # Through Sentinel, redis-py's pool does not make callers wait for a free connection;
    # a burst of joins needs more than the pool holds at once, and none may fail.
    _primary, _replica, sentinel = sentinel_setup
    hub = PubSubHub(settings=make_settings(key_prefix, sentinel.url))
    async with hub, serve(build_app(hub)) as url:
        await join_in_a_burst(url, hub)
