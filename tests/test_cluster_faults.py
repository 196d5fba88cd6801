"""Worker crashes, graceful stops and Redis restarts, with real processes and a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.live import close_code_of, connect, recv_until, wait_for_condition
from tools.processes import uvicorn_process
from tools.redis_servers import OwnedRedisServer

pytestmark = pytest.mark.slow

HEARTBEAT_TTL = 2.0


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


def env_for(url: str, prefix: str, ttl: float = HEARTBEAT_TTL) -> dict[str, str]:
    return {
        "PUBSUB_REDIS_URL": url,
        "PUBSUB_KEY_PREFIX": prefix,
        "PUBSUB_HEARTBEAT_TTL": str(ttl),
        "PUBSUB_REDIS_TIMEOUT": "1",
        "PUBSUB_RECONNECT_DELAY_MAX": "0.5",
    }


def pid_of(base: str) -> int:
    return int(httpx.get(f"{base}/healthz", timeout=5).json()["pid"])


@pytest.fixture
def redis_keys(owned_redis: OwnedRedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(owned_redis.url)
    yield client
    client.close()


async def test_presence_of_a_killed_worker_is_reaped_within_two_ttls(
    owned_redis: OwnedRedisServer, redis_keys: redis.Redis, key_prefix: str
) -> None:
    env = env_for(owned_redis.url, key_prefix)
    app = "tests.apps.cluster_app:app"
    with uvicorn_process(app, env) as survivor, uvicorn_process(app, env) as doomed:
        on_survivor = await connect(ws_url(survivor, "/ws/room"))
        on_doomed = [await connect(ws_url(doomed, "/ws/room")) for _ in range(3)]
        await recv_until(on_survivor, lambda m: m == {"count": 4})
        killed_at = time.monotonic()
        os.kill(pid_of(doomed), signal.SIGKILL)
        await recv_until(on_survivor, lambda m: m == {"count": 1}, timeout=2 * HEARTBEAT_TTL + 2)
        reap_seconds = time.monotonic() - killed_at
        print(f"reaped a SIGKILLed worker's presence in {reap_seconds:.2f}s (TTL {HEARTBEAT_TTL}s)")
        assert redis_keys.scard(RedisKeys(key_prefix).members("room")) == 1
        # The reaper lists the instance as gone after it removed its channel entries (whose
        # leaves the survivor's client saw) and its directory entries: a round trip or two.
        await wait_for_condition(lambda: redis_keys.scard(f"{key_prefix}:workers") == 1, 2)
        for ws in on_doomed:
            ws.transport.abort()
        await on_survivor.close()


async def test_sigterm_removes_presence_at_once_and_closes_sockets(
    owned_redis: OwnedRedisServer, redis_keys: redis.Redis, key_prefix: str
) -> None:
    # A long TTL: if the count drops quickly, it was the graceful stop, not reaping.
    env = env_for(owned_redis.url, key_prefix, ttl=60)
    app = "tests.apps.cluster_app:app"
    with uvicorn_process(app, env) as staying:
        watcher = await connect(ws_url(staying, "/ws/room"))
        with uvicorn_process(app, env) as stopping:
            leaving = await connect(ws_url(stopping, "/ws/room"))
            await recv_until(watcher, lambda m: m == {"count": 2})
            os.kill(pid_of(stopping), signal.SIGTERM)
            # uvicorn closes its sockets with 1012 before the lifespan ends; a socket still
            # open when the hub stops gets 1001. Either way the client is told to come back.
            assert await close_code_of(leaving) in (1001, 1012)
            await recv_until(watcher, lambda m: m == {"count": 1}, timeout=10)
        assert redis_keys.scard(RedisKeys(key_prefix).members("room")) == 1
        assert redis_keys.scard(f"{key_prefix}:workers") == 1
        await watcher.close()


async def test_broadcasts_and_presence_resume_after_redis_restart(
    owned_redis: OwnedRedisServer, redis_keys: redis.Redis, key_prefix: str
) -> None:
    env = env_for(owned_redis.url, key_prefix)
    app = "tests.apps.cluster_app:app"
    with uvicorn_process(app, env) as a, uvicorn_process(app, env) as b:
        on_a = await connect(ws_url(a, "/ws/room"))
        on_b = await connect(ws_url(b, "/ws/room"))
        for ws in (on_a, on_b):
            await recv_until(ws, lambda m: m == {"count": 2})

        owned_redis.stop()
        async with httpx.AsyncClient(timeout=10) as http:
            started = time.monotonic()
            down = await http.post(f"{a}/publish/room", json={"during": "outage"})
            assert down.status_code == 503  # a clear error, promptly, not a hang
            assert time.monotonic() - started < 5

            owned_redis.start()  # same port, every key lost
            restarted_at = time.monotonic()
            attempt = 0
            async with asyncio.timeout(5):
                while True:
                    attempt += 1
                    response = await http.post(f"{a}/publish/room", json={"after": attempt})
                    if response.status_code == 200:
                        try:
                            await recv_until(on_b, lambda m: "after" in m, timeout=0.5)
                            break
                        except TimeoutError:
                            continue
            print(f"broadcasts resumed {time.monotonic() - restarted_at:.2f}s after Redis restart")
        # Both workers registered their sockets again in the new, empty Redis.
        members_key = RedisKeys(key_prefix).members("room")
        await wait_for_condition(lambda: redis_keys.scard(members_key) == 2, 5)
        # A worker's first beat after the loss re-adds its old instance before it moves to
        # a new one, which then reaps the old: converged within two heartbeat periods.
        workers_key = f"{key_prefix}:workers"
        await wait_for_condition(lambda: redis_keys.scard(workers_key) == 2, 2 * HEARTBEAT_TTL)
        for ws in (on_a, on_b):
            await ws.close()
