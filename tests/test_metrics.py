"""Prometheus metrics: counted once per broadcast per worker, served on a mounted route."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fastapi_pubsub_cluster import PrometheusMetrics, PubSubHub, PubSubSettings
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect, reconnect_signal, recv_until, serve
from tools.redis_servers import OwnedRedisServer


def samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or (set(sample.labels) == {"le"} and sample.labels["le"] == "+Inf")
    }


def app_with_metrics(hub: PubSubHub, metrics: PrometheusMetrics) -> FastAPI:
    app = build_app(hub)
    app.mount("/metrics", metrics.asgi_app())
    return app


async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url.replace("ws://", "http://") + "/metrics/")
        response.raise_for_status()
        return samples(response.text)


async def test_metrics_count_connections_publishes_deliveries_and_latency(
    settings: PubSubSettings,
) -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    hub = PubSubHub(settings=settings, metrics=metrics)
    async with hub, serve(app_with_metrics(hub, metrics)) as url:
        clients = [await connect(f"{url}/ws/metered") for _ in range(3)]
        await asyncio.gather(*(recv_until(ws, lambda m: m == {"count": 3}) for ws in clients))
        before = await scrape(url)
        assert before["pubsub_connections"] == 3
        assert before["pubsub_channels"] == 1
        for n in range(2):
            await hub.publish("metered", {"n": n})
        for ws in clients:
            for n in range(2):
                await recv_until(ws, lambda m, n=n: m == {"n": n})
        after = await scrape(url)
        assert (
            after["pubsub_messages_published_total"]
            - before.get("pubsub_messages_published_total", 0)
            == 2
        )
        delivered = (
            after["pubsub_messages_delivered_total"] - before["pubsub_messages_delivered_total"]
        )
        assert delivered == 6  # two messages to three sockets
        observed = after["pubsub_publish_to_deliver_seconds_count"] - before.get(
            "pubsub_publish_to_deliver_seconds_count", 0
        )
        assert observed == 2  # once per broadcast, not once per socket
        for ws in clients:
            await ws.close()


async def test_metrics_count_redis_reconnects(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    hub = PubSubHub(settings=make_settings(key_prefix, owned_redis.url), metrics=metrics)
    reconnected = reconnect_signal(hub)
    async with hub, serve(app_with_metrics(hub, metrics)) as url:
        owned_redis.restart()
        await asyncio.wait_for(reconnected.wait(), 10)
        assert (await scrape(url))["pubsub_redis_reconnects_total"] == 1


async def test_the_path_broadcasts_take_to_each_socket_is_counted(key_prefix: str) -> None:
    from fastapi_pubsub_cluster.servers.uvicorn_ws import PubSubWebSocketProtocol

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    async with PubSubHub(settings=make_settings(key_prefix), metrics=metrics) as hub:
        app = build_app(hub)
        async with serve(app, ws=PubSubWebSocketProtocol) as direct, serve(app) as plain:
            for url in (f"{direct}/ws/paths", f"{plain}/ws/paths", f"{plain}/ws/paths"):
                ws = await connect(url, compression=None)
                await recv_until(ws, lambda m: "count" in m)
                await ws.close()

    def opened(path: str) -> float | None:
        return registry.get_sample_value("pubsub_connections_opened_total", {"path": path})

    assert (opened("direct"), opened("asgi")) == (1.0, 2.0)
