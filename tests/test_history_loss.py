"""History when Redis itself lost messages (a restart without persistence, a link that
missed messages it cannot replay): clients are told, never left to think nothing was lost.

A stream that Redis recreated after losing its data must not vouch for ids handed out
before; a socket that stayed connected while its worker could not replay is either brought
up to date, told of the gap, or closed so that it resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.errors import CloseCode
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, reconnect_signal, recv_until, serve
from tests.tcp_proxy import DeafeningProxy
from tools.redis_servers import OwnedRedisServer


def stored_or_gap(message: Any) -> bool:
    return isinstance(message, dict) and ("id" in message or "history_gap" in message)


@dataclass
class DeafenableHub:
    """A hub (history channel ``kept``) reaching Redis through a proxy that can deafen its
    pub/sub link; ``reconnected`` is set once the link is renewed."""

    hub: PubSubHub
    url: str
    proxy: DeafeningProxy
    reconnected: asyncio.Event

    async def stored_until(self, ws: ClientConnection, last: int) -> list[Any]:
        """The ``n`` of each stored message (or gap) ``ws`` receives, up to ``last``."""
        got: list[Any] = []
        while not got or got[-1] != last:
            got.append((await recv_until(ws, stored_or_gap)).get("data", {}).get("n"))
        return got


@asynccontextmanager
async def deafenable_hub(server: OwnedRedisServer, key_prefix: str) -> AsyncIterator[DeafenableHub]:
    proxy = DeafeningProxy("127.0.0.1", server.port)
    async with proxy.running():
        settings = make_settings(
            key_prefix,
            f"redis://127.0.0.1:{proxy.port}/0",
            history_channels="kept",
            probe_interval=0.5,
            probe_timeout=0.5,
        )
        hub = PubSubHub(settings=settings)
        reconnected = reconnect_signal(hub)
        async with hub, serve(build_app(hub)) as url:
            yield DeafenableHub(hub, url, proxy, reconnected)


async def restart_without_data(server: OwnedRedisServer, reconnected: asyncio.Event) -> None:
    """Crash Redis (every key lost: it keeps nothing on disk) and wait for the hub's link."""
    reconnected.clear()
    await asyncio.to_thread(server.restart)
    await asyncio.wait_for(reconnected.wait(), 15)


async def test_a_resume_after_redis_lost_its_data_reports_the_gap(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        reconnected = reconnect_signal(hub)
        ws = await connect(f"{url}/ws/news")
        await hub.publish("news", {"n": 0})
        seen = await recv_until(ws, stored_or_gap)
        await ws.close()
        for n in (1, 2):  # stored and acknowledged, then lost with Redis
            await hub.publish("news", {"n": n})
        await restart_without_data(owned_redis, reconnected)
        await hub.publish("news", {"n": 3})
        back = await connect(f"{url}/ws/news?since={seen['id']}")
        first = await recv_until(back, stored_or_gap)
        assert "history_gap" in first, f"the client was not told that 1 and 2 are gone: {first}"
        assert first["history_gap"]["since"] == seen["id"]
        after = await recv_until(back, lambda m: "id" in m)
        assert after["data"] == {"n": 3}
        await back.close()


async def test_a_client_that_joined_before_any_message_resumes_without_a_false_gap(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """The position handed to a client on an empty history channel still vouches for
    everything stored after it (no gap reported when nothing was lost)."""
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/news?frames=tagged")
        welcome = await recv_until(ws, lambda m: m.get("event") == "welcome")
        start = welcome["last_id"]
        await ws.close()
        for n in (1, 2):
            await hub.publish("news", {"n": n})
        back = await connect(f"{url}/ws/news?since={start}")
        got = [await recv_until(back, stored_or_gap) for _ in range(2)]
        assert [m.get("data") for m in got] == [{"n": 1}, {"n": 2}], got
        await back.close()


async def test_a_socket_that_stayed_connected_is_told_when_redis_lost_its_data(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        reconnected = reconnect_signal(hub)
        ws = await connect(f"{url}/ws/news")
        await hub.publish("news", {"n": 0})
        seen = await recv_until(ws, stored_or_gap)
        await restart_without_data(owned_redis, reconnected)
        await hub.publish("news", {"n": 1})
        first = await recv_until(ws, stored_or_gap)
        assert "history_gap" in first, f"no gap notice after Redis lost the stream: {first}"
        assert first["history_gap"]["since"] == seen["id"]
        after = await recv_until(ws, stored_or_gap)
        assert after["data"] == {"n": 1}
        await ws.close()


async def test_a_link_that_missed_the_first_messages_of_a_channel_replays_them(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """A socket that had received nothing yet when the link went deaf still gets what was
    stored meanwhile, once the link is renewed."""
    async with deafenable_hub(owned_redis, key_prefix) as rig:
        ws = await connect(f"{rig.url}/ws/kept")
        await recv_until(ws, lambda m: m == {"count": 1})
        assert rig.proxy.deafen_subscribers() == 1
        for n in (1, 2, 3):  # stored, not heard by the deaf link
            await rig.hub.publish("kept", {"n": n})
        await asyncio.wait_for(rig.reconnected.wait(), 10)
        await rig.hub.publish("kept", {"n": 4})
        assert await rig.stored_until(ws, 4) == [1, 2, 3, 4]
        await ws.close()


async def test_a_socket_whose_missed_messages_cannot_be_read_is_closed_to_resume(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """The worker's link came back but it cannot read what its sockets missed (here its
    Redis user may not read streams): they are closed with 1012, and resume elsewhere."""
    admin = aioredis.Redis.from_url(owned_redis.url)
    await admin.acl_setuser(
        "worker",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    settings = make_settings(
        key_prefix,
        f"redis://worker:secret@127.0.0.1:{owned_redis.port}/0",
        history_channels="news",
    )
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        reconnected = reconnect_signal(hub)
        ws = await connect(f"{url}/ws/news")
        await hub.publish("news", {"n": 0})
        await recv_until(ws, stored_or_gap)
        # From now on the worker may not read streams (ACL changes apply to open connections).
        await admin.acl_setuser("worker", enabled=True, commands=["-xrange"])
        await admin.client_kill_filter(_type="pubsub")
        await asyncio.wait_for(reconnected.wait(), 10)
        assert await close_code_of(ws) == CloseCode.SERVICE_RESTART
    await admin.aclose()


async def test_a_resume_id_from_the_future_does_not_move_the_workers_replay_start(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """The first socket of a channel on a worker resumes from a (valid) id far in the
    future: the replay after a lost link must still start where the stream really is, so
    that the other sockets get what the deaf link missed."""
    async with deafenable_hub(owned_redis, key_prefix) as rig:
        hostile = await connect(f"{rig.url}/ws/kept?since=18446744073709551615-0")
        await recv_until(hostile, lambda m: m == {"count": 1})
        ws = await connect(f"{rig.url}/ws/kept")
        await recv_until(ws, lambda m: m == {"count": 2})
        assert rig.proxy.deafen_subscribers() == 1
        for n in (1, 2):  # stored, not heard by the deaf link
            await rig.hub.publish("kept", {"n": n})
        await asyncio.wait_for(rig.reconnected.wait(), 10)
        await rig.hub.publish("kept", {"n": 3})
        assert await rig.stored_until(ws, 3) == [1, 2, 3]
        for client in (hostile, ws):
            await client.close()
