"""Two real uvicorn processes sharing one Redis: fan-out and presence across workers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.live import connect, last_message_when_quiet, recv_until
from tools.processes import uvicorn_process

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_env(redis_url: str, key_prefix: str, redis_client: object) -> dict[str, str]:
    return {
        "PUBSUB_REDIS_URL": redis_url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HEARTBEAT_TTL": "2",
    }


@pytest.fixture
def two_workers(cluster_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    with (
        uvicorn_process("tests.apps.cluster_app:app", cluster_env) as a,
        uvicorn_process("tests.apps.cluster_app:app", cluster_env) as b,
    ):
        yield a, b


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def test_broadcast_published_on_worker_a_reaches_clients_of_worker_b(
    two_workers: tuple[str, str],
) -> None:
    a, b = two_workers
    on_a = await connect(ws_url(a, "/ws/news"))
    on_b = await connect(ws_url(b, "/ws/news"))
    for ws in (on_a, on_b):
        await recv_until(ws, lambda m: m == {"count": 2})
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{a}/publish/news", json={"headline": "cross-worker"})
        response.raise_for_status()
    for ws in (on_a, on_b):
        assert await recv_until(ws, lambda m: "headline" in m) == {"headline": "cross-worker"}
    # A client message on worker B reaches the client on worker A too.
    await on_b.send('{"chat": "hi"}')
    echo = await recv_until(on_a, lambda m: "echo" in m)
    assert echo["echo"] == {"chat": "hi"}
    for ws in (on_a, on_b):
        await ws.close()


async def test_counts_are_cluster_wide_after_concurrent_joins_and_leaves(
    two_workers: tuple[str, str],
) -> None:
    a, b = two_workers
    urls = [ws_url(a if i % 2 else b, "/ws/crowd") for i in range(20)]
    clients = await asyncio.gather(*(connect(url) for url in urls))
    await asyncio.gather(*(recv_until(ws, lambda m: m == {"count": 20}) for ws in clients))
    leaving, staying = clients[:10], clients[10:]  # five of each worker leave at once
    await asyncio.gather(*(ws.close() for ws in leaving))
    finals = await asyncio.gather(*(last_message_when_quiet(ws, 1.5) for ws in staying))
    assert finals == [{"count": 10}] * 10
    await asyncio.gather(*(ws.close() for ws in staying))


async def test_the_original_packages_example_counts_clients_of_both_workers(
    cluster_env: dict[str, str],
) -> None:
    app = "examples.connected_clients:app"
    with uvicorn_process(app, cluster_env) as a, uvicorn_process(app, cluster_env) as b:
        first = await connect(ws_url(a, "/ws/connected_clients"))
        await recv_until(first, lambda m: m == {"num_connected_clients": 1})
        second = await connect(ws_url(b, "/ws/connected_clients"))
        for ws in (first, second):
            await recv_until(ws, lambda m: m == {"num_connected_clients": 2})
        await second.close()
        await recv_until(first, lambda m: m == {"num_connected_clients": 1})
        await first.close()
