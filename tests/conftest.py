"""Fixtures: real Redis, a unique key prefix per test, hubs for every backend, live servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings
from tests.apps.local_app import build_app
from tests.live import serve
from tools.processes import uvicorn_process
from tools.redis_servers import (
    OwnedRedisCluster,
    OwnedRedisServer,
    OwnedSentinel,
    session_redis_url,
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis shared by the session (see ``session_redis_url``)."""
    with session_redis_url() as url:
        yield url


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test (or user of a shared Redis) has."""
    return f"pubsub-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for checking what the library wrote; deletes the test's keys after."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def owned_redis() -> Iterator[OwnedRedisServer]:
    """A redis-server this test alone owns, to kill and restart (never the shared one)."""
    server = OwnedRedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def make_settings(
    key_prefix: str, redis_url: str | None = None, **changes: object
) -> PubSubSettings:
    """Test settings: short timers so failure paths finish quickly."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "heartbeat_ttl": 1.5,
        "redis_timeout": 1.0,
        "reconnect_delay_initial": 0.05,
        "reconnect_delay_max": 0.5,
        "close_timeout": 2.0,
    }
    values.update(changes)
    return PubSubSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once per connection manager."""
    return str(request.param)


@pytest.fixture
def settings(backend: str, key_prefix: str, request: pytest.FixtureRequest) -> PubSubSettings:
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    if backend == "redis":
        request.getfixturevalue("redis_client")  # cleans the test's keys afterwards
    return make_settings(key_prefix, url)


@pytest.fixture
async def hub(settings: PubSubSettings) -> AsyncIterator[PubSubHub]:
    """A started hub on the parametrised backend, stopped after the test."""
    async with PubSubHub(settings=settings) as started:
        yield started


@pytest.fixture
async def server(hub: PubSubHub) -> AsyncIterator[str]:
    """The local test app around the parametrised hub, served by uvicorn in this process."""
    async with serve(build_app(hub)) as url:
        yield url


@pytest.fixture
def two_workers(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> Iterator[tuple[str, str]]:
    """Two real uvicorn processes of the cluster test app on one Redis; their base URLs."""
    env = {"PUBSUB_REDIS_URL": redis_url, "PUBSUB_KEY_PREFIX": key_prefix}
    with (
        uvicorn_process("tests.apps.cluster_app:app", env) as a,
        uvicorn_process("tests.apps.cluster_app:app", env) as b,
    ):
        yield a, b


@pytest.fixture
async def two_hubs(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[PubSubHub, PubSubHub]]:
    """Two started hubs on one Redis: two workers in this process."""
    settings = make_settings(key_prefix, redis_url)
    async with PubSubHub(settings=settings) as first, PubSubHub(settings=settings) as second:
        yield first, second


@pytest.fixture
def sentinel_setup() -> Iterator[tuple[OwnedRedisServer, OwnedRedisServer, OwnedSentinel]]:
    """A primary, a replica of it, and a Sentinel watching them, all on loopback."""
    primary = OwnedRedisServer()
    primary.start()
    replica = OwnedRedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    sentinel = OwnedSentinel(primary_port=primary.port)
    sentinel.start()
    try:
        yield primary, replica, sentinel
    finally:
        sentinel.close()
        replica.close()
        primary.close()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[OwnedRedisCluster]:
    """A 3-master Redis Cluster of its own, for the tests of one module."""
    cluster = OwnedRedisCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()
