"""History and resume: a reconnecting client gets what it missed, in order, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings, RedisBackend
from fastapi_pubsub_cluster.errors import CloseCode
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, reconnect_signal, recv_json, recv_until, serve
from tools.redis_servers import OwnedRedisServer


@pytest.fixture
async def history_hub(settings: PubSubSettings) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=settings.with_changes(history_channels="news|small")) as hub:
        yield hub


async def receive_stored(ws: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages that carry a stream id (skipping presence counts)."""
    return [await recv_until(ws, lambda m: "id" in m) for _ in range(count)]


def assert_strictly_ordered(ids: list[str]) -> None:
    keys = [tuple(int(part) for part in i.split("-")) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def last_seen_then_away(hub: PubSubHub, url: str, channel: str, missed: int) -> str:
    """A client receives one message and leaves; ``missed`` more are published meanwhile.
    Returns the id of the last message it saw."""
    ws = await connect(f"{url}/ws/{channel}")
    await hub.publish(channel, {"n": -1})
    (seen,) = await receive_stored(ws, 1)
    await ws.close()
    for n in range(missed):
        await hub.publish(channel, {"n": n})
    return str(seen["id"])


async def test_reconnecting_client_receives_exactly_what_it_missed_in_order(
    history_hub: PubSubHub,
) -> None:
    async with serve(build_app(history_hub)) as url:
        seen = await last_seen_then_away(history_hub, url, "news", 50)
        back = await connect(f"{url}/ws/news?since={seen}")
        missed = await receive_stored(back, 50)
        assert [m["data"]["n"] for m in missed] == list(range(50))
        assert_strictly_ordered([seen] + [m["id"] for m in missed])
        # Then live messages, and nothing twice.
        await history_hub.publish("news", {"n": "live"})
        assert (await receive_stored(back, 1))[0]["data"] == {"n": "live"}
        await back.close()


async def test_messages_published_during_the_replay_are_neither_lost_nor_doubled(
    history_hub: PubSubHub,
) -> None:
    async with serve(build_app(history_hub)) as url:
        seen = await last_seen_then_away(history_hub, url, "news", 50)

        async def keep_publishing() -> None:
            for n in range(50, 100):
                await history_hub.publish("news", {"n": n})
                await asyncio.sleep(0)  # interleave with the reconnecting client's replay

        publisher = asyncio.create_task(keep_publishing())
        back = await connect(f"{url}/ws/news?since={seen}")
        received = await receive_stored(back, 100)
        await publisher
        assert [m["data"]["n"] for m in received] == list(range(100))
        assert_strictly_ordered([m["id"] for m in received])
        await back.close()


async def test_client_is_told_when_history_no_longer_reaches_back(settings: PubSubSettings) -> None:
    # Redis trims streams by whole nodes (MAXLEN ~), so publish well past one node.
    small = settings.with_changes(history_channels="small", history_size=10)
    async with PubSubHub(settings=small) as hub, serve(build_app(hub)) as url:
        seen = await last_seen_then_away(hub, url, "small", 300)
        back = await connect(f"{url}/ws/small?since={seen}")
        gap = await recv_until(back, lambda m: "history_gap" in m or "id" in m)
        assert gap["history_gap"]["since"] == seen
        assert gap["history_gap"]["oldest"] is not None
        # What is still kept follows, in order, ending with the newest message.
        rest = []
        while not rest or rest[-1]["data"]["n"] != 299:
            rest.append(await recv_until(back, lambda m: "id" in m))
        assert_strictly_ordered([m["id"] for m in rest])
        assert rest[0]["id"] == gap["history_gap"]["oldest"]
        await back.close()


async def test_resume_on_a_channel_without_history_reports_a_gap(history_hub: PubSubHub) -> None:
    async with serve(build_app(history_hub)) as url:
        ws = await connect(f"{url}/ws/plain?since=1700000000000-0")
        first = await recv_json(ws)
        assert first == {"history_gap": {"since": "1700000000000-0", "oldest": None}}
        await ws.close()


async def test_malformed_resume_position_closes_1008(history_hub: PubSubHub) -> None:
    async with serve(build_app(history_hub)) as url:
        ws = await connect(f"{url}/ws/news?since=yesterday")
        assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
        assert history_hub.fanout.local_connection_count == 0


async def test_worker_replays_what_was_stored_while_its_link_was_down(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    admin = aioredis.Redis.from_url(owned_redis.url)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        assert isinstance(hub.backend, RedisBackend)
        reconnected = reconnect_signal(hub)
        ws = await connect(f"{url}/ws/news")
        await hub.publish("news", {"n": -1})
        await receive_stored(ws, 1)
        # Cut the worker's subscriber link only; its command connections stay up.
        await admin.client_kill_filter(_type="pubsub")
        for n in range(20):
            await hub.publish("news", {"n": n})
        await asyncio.wait_for(reconnected.wait(), 10)
        received = await receive_stored(ws, 20)
        assert [m["data"]["n"] for m in received] == list(range(20))
        await hub.publish("news", {"n": "after"})
        assert (await receive_stored(ws, 1))[0]["data"] == {"n": "after"}
        await ws.close()
    await admin.aclose()


@pytest.mark.slow
async def test_resume_works_across_workers_and_across_a_worker_restart(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    import httpx

    from tools.processes import uvicorn_process

    env = {
        "PUBSUB_REDIS_URL": owned_redis.url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HISTORY_CHANNELS": "news",
    }
    app = "tests.apps.cluster_app:app"

    def ws_url(base: str, query: str = "") -> str:
        return base.replace("http://", "ws://") + "/ws/news" + query

    async with httpx.AsyncClient() as http:
        with uvicorn_process(app, env) as b:

            async def publish(numbers: range) -> None:
                for n in numbers:
                    (await http.post(f"{b}/publish/news", json={"n": n})).raise_for_status()

            with uvicorn_process(app, env) as a:
                on_a = await connect(ws_url(a))
                await recv_until(on_a, lambda m: "count" in m)
                await publish(range(1))
                (seen,) = await receive_stored(on_a, 1)
                await on_a.close()
            # Worker A is gone; 50 messages are published through worker B meanwhile.
            await publish(range(1, 51))
            on_b = await connect(ws_url(b, f"?since={seen['id']}"))
            missed = await receive_stored(on_b, 50)
            assert [m["data"]["n"] for m in missed] == list(range(1, 51))
            await on_b.close()
            # A restarted worker A serves the same history.
            with uvicorn_process(app, env) as a_again:
                back = await connect(ws_url(a_again, f"?since={missed[24]['id']}"))
                rest = await receive_stored(back, 25)
                assert [m["data"]["n"] for m in rest] == list(range(26, 51))
                await back.close()
