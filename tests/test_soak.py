"""Bounded churn: many joins, leaves, aborts and publishes; nothing may be left behind."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings, RedisBackend
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from fastapi_pubsub_cluster.backends.redis.scripts import SEQ_IDLE_TTL_MS
from tests.apps.local_app import build_app
from tests.live import connect, recv_until, serve, wait_for_condition

ROUNDS = 8
CLIENTS_PER_ROUND = 25
CHANNELS = [f"soak-{i}" for i in range(5)]


async def test_churn_leaves_no_tasks_sockets_or_keys_behind(settings: PubSubSettings) -> None:
    rng = random.Random(1234)
    hub = PubSubHub(settings=settings)
    async with hub, serve(build_app(hub)) as url:
        fanout = hub.fanout

        async def visit(channel: str) -> None:
            ws = await connect(f"{url}/ws/{channel}")
            await recv_until(ws, lambda m: "count" in m)
            action = rng.choice(["close", "abort", "chat"])
            if action == "chat":
                await ws.send('{"hello": 1}')
                await recv_until(ws, lambda m: "echo" in m)
            if action == "abort":
                ws.transport.abort()  # vanishes without a close handshake
            else:
                await ws.close()

        for _ in range(ROUNDS):
            visits = [visit(rng.choice(CHANNELS)) for _ in range(CLIENTS_PER_ROUND)]
            publishes = [hub.publish(channel, {"tick": 1}) for channel in CHANNELS]
            await asyncio.gather(*visits, *publishes)

        await wait_for_condition(lambda: fanout.local_connection_count == 0, 15)
        # Leaves and regenerations all ended; no channel is mirrored any more.
        await wait_for_condition(lambda: fanout.pending_tasks == 0, 15)
        assert all(not hub.get(channel) for channel in CHANNELS)
        assert fanout.mirrored_channels == []

        backend = hub.backend
        if isinstance(backend, RedisBackend):
            client = aioredis.Redis.from_url(backend.redis_url)
            await wait_for_condition(lambda: not backend.subscribed_channels, 10)
            prefix = settings.key_prefix
            keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:*")]
            layout = RedisKeys(prefix)
            lasting = {layout.workers, layout.heartbeat(str(backend.instance)), layout.settings}
            for key in keys:
                if key in lasting:
                    continue
                # Only idle channels' sequence counters remain, and they expire.
                assert key.endswith("}:seq"), key
                assert 0 < await client.pttl(key) <= SEQ_IDLE_TTL_MS
            await client.aclose()
