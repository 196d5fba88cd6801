"""The guarantees README makes, under the faults real deployments meet (issue 13's cases).

Each test owns its redis-server (stalled with DEBUG SLEEP, paused, restarted) and speaks to
the library through real sockets, the hub's public API and Redis itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import psutil
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import (
    BasePubSubWebSocket,
    PublishError,
    PubSubHub,
    RedisBackend,
    publish_sync,
)
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from fastapi_pubsub_cluster.backends.redis.scripts import REAP_CHANNEL, SEQ_IDLE_TTL_MS
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.servers.uvicorn_ws import PubSubWebSocketProtocol
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import (
    close_code_of,
    connect,
    reconnect_signal,
    recv_json,
    recv_until,
    serve,
    wait_for_async_condition,
    wait_for_condition,
)
from tests.tcp_proxy import DeafeningProxy
from tests.test_slow_clients import BIG, stalled_client
from tools.redis_servers import OwnedRedisServer

pytestmark = pytest.mark.slow

STALL = 3.0  # seconds of DEBUG SLEEP: longer than a command's time limit, shorter than a TTL
TTL = 6.0  # heartbeat TTL (the default) of the workers in the stall tests: it outlives a stall
BEAT = TTL / 3  # a heartbeat period


@pytest.fixture
async def admin(owned_redis: OwnedRedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(owned_redis.url)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def stalled(server: OwnedRedisServer, seconds: float = STALL) -> AsyncIterator[None]:
    """Redis answers nothing for ``seconds`` (DEBUG SLEEP); the block runs during it, and the
    context ends once Redis answers again."""
    probe = aioredis.Redis.from_url(server.url)
    await probe.ping()
    sleeper = server.debug_sleep(seconds)

    async def asleep() -> bool:
        try:
            await asyncio.wait_for(probe.ping(), 0.05)
        except TimeoutError:
            return True
        return False

    await wait_for_async_condition(asleep, 5)
    yield
    await asyncio.to_thread(sleeper.join, seconds + 10)
    await probe.aclose(close_connection_pool=True)


async def members(admin: aioredis.Redis, prefix: str, channel: str) -> set[str]:
    return {m.decode() for m in await admin.smembers(RedisKeys(prefix).members(channel))}


# -- 1. a publish retried after a timeout ------------------------------------------------


async def test_a_publish_during_a_redis_stall_reaches_each_client_at_most_once(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    # The default time limit: a retry sent during the stall lands within it, and both run.
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL, redis_timeout=2.0)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/plain")
        await recv_until(ws, lambda m: m == {"count": 1})
        async with stalled(owned_redis):
            with contextlib.suppress(PublishError):  # it may time out, yet have run
                await hub.publish("plain", {"n": 1})
        await hub.publish("plain", {"n": "after"})
        seen: list[Any] = []
        await recv_until(ws, lambda m: m == {"n": "after"}, skipped=seen)
        assert seen.count({"n": 1}) <= 1, seen
        await ws.close()


async def test_a_stored_publish_during_a_redis_stall_is_stored_and_delivered_at_most_once(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(
        key_prefix, owned_redis.url, history_channels="kept", heartbeat_ttl=TTL
    )
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/kept")
        await recv_until(ws, lambda m: m == {"count": 1})
        await hub.publish("kept", {"n": 0})  # the store script is loaded, as in a live app
        await recv_until(ws, lambda m: m.get("data") == {"n": 0})
        async with stalled(owned_redis):
            with contextlib.suppress(PublishError):
                await hub.publish("kept", {"n": 1})
        await hub.publish("kept", {"n": "after"})
        seen: list[Any] = []
        await recv_until(ws, lambda m: m.get("data") == {"n": "after"}, skipped=seen)
        live = [m for m in seen if m.get("data") == {"n": 1}]
        stored = await admin.xrange(RedisKeys(key_prefix).history("kept"))
        assert len(live) <= 1 and len(stored) == len(live) + 2, (live, stored)
        # A client resuming from the start replays it no more often than it was stored.
        resumed = await connect(f"{url}/ws/kept?since=0-0")
        replayed = [await recv_json(resumed) for _ in range(len(stored))]
        expected = [{"n": 0}, *(m["data"] for m in live), {"n": "after"}]
        assert [m["data"] for m in replayed] == expected
        for client in (ws, resumed):
            await client.close()


async def test_sequential_publishes_all_arrive_when_redis_kills_the_command_connections(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/killed")
        await recv_until(ws, lambda m: m == {"count": 1})
        for n in range(5):
            await hub.publish("killed", {"n": n})  # one at a time: nothing to pipeline with
            # Every connection but pub/sub links (and this one): the publish path's too.
            assert await admin.execute_command("CLIENT", "KILL", "TYPE", "normal") >= 1
        await hub.publish("killed", {"n": "last"})
        seen: list[Any] = []
        await recv_until(ws, lambda m: m == {"n": "last"}, skipped=seen)
        assert [m for m in seen if "n" in m] == [{"n": n} for n in range(5)]
        await ws.close()


# -- 2. leaves that fail during a stall ---------------------------------------------------


async def test_leaves_during_a_redis_stall_are_recorded_once_redis_answers(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        stays = await connect(f"{url}/ws/crowd")
        leaving = [await connect(f"{url}/ws/crowd") for _ in range(40)]
        await recv_until(stays, lambda m: m == {"count": 41})
        async with stalled(owned_redis):
            await asyncio.gather(*(ws.close() for ws in leaving))
        ended = time.monotonic()
        await wait_for_async_condition(
            lambda: _equals(members(admin, key_prefix, "crowd"), set(hub.get("crowd")), 1), 2 * BEAT
        )
        await recv_until(stays, lambda m: m == {"count": 1}, timeout=2 * BEAT)
        print(f"presence converged {time.monotonic() - ended:.2f}s after the stall")
        await stays.close()


async def _equals(found: Any, mirror: set[str], size: int) -> bool:
    value = await found
    return bool(value == mirror and len(value) == size)


# -- 3. failures after the join ----------------------------------------------------------


async def test_sockets_refused_on_a_history_channel_leave_no_member(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="log", heartbeat_ttl=TTL)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        refused = [await connect(f"{url}/ws/log?since=99999999999999999999-0") for _ in range(5)]
        for ws in refused:
            assert await close_code_of(ws) in (
                CloseCode.POLICY_VIOLATION,
                CloseCode.TRY_AGAIN_LATER,
            )
        await wait_for_condition(lambda: hub.fanout.local_connection_count == 0, 5)
        await wait_for_async_condition(
            lambda: _equals(members(admin, key_prefix, "log"), set(), 0), 2 * BEAT
        )


async def test_a_join_that_timed_out_but_ran_leaves_no_member(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    # A short time limit: the join gives up (with its retries) within the stall, and the
    # attempts Redis had already received run when it wakes.
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL, redis_timeout=0.5)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        watcher = await connect(f"{url}/ws/late")
        await recv_until(watcher, lambda m: m == {"count": 1})
        async with stalled(owned_redis):
            refused = await asyncio.gather(*(connect(f"{url}/ws/late") for _ in range(3)))
            codes = await asyncio.gather(*(close_code_of(ws) for ws in refused))
        assert set(codes) == {CloseCode.TRY_AGAIN_LATER}
        ended = time.monotonic()
        await wait_for_async_condition(
            lambda: _equals(members(admin, key_prefix, "late"), set(hub.get("late")), 1), 2 * BEAT
        )
        print(f"joins that ran late were undone {time.monotonic() - ended:.2f}s after the stall")
        await watcher.close()


async def test_a_client_join_that_timed_out_but_ran_is_refused_and_leaves_no_member(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    # The same for a further channel a running socket asks to join: it is told "refused",
    # stays open and in its own channel, and the join that ran late is undone. (A time
    # limit short enough that the join's attempts and the check that Redis answers a fresh
    # connection all end within the stall.)
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL, redis_timeout=0.25)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/rooms/home")
        me = (await recv_until(ws, lambda m: "me" in m))["me"]
        async with stalled(owned_redis):
            await ws.send(json.dumps({"join": "late-room"}))
            answer = await recv_until(ws, lambda m: m.get("event") in ("joined", "refused"))
        assert answer["event"] == "refused" and "unavailable" in answer["reason"]
        ended = time.monotonic()
        await wait_for_async_condition(
            lambda: _equals(members(admin, key_prefix, "late-room"), set(), 0), 2 * BEAT
        )
        print(f"a client join that ran late was undone {time.monotonic() - ended:.2f}s after")
        assert await members(admin, key_prefix, "home") == {me}
        await ws.send(json.dumps({"join": "late-room"}))  # once Redis answers, it joins
        await recv_until(ws, lambda m: m.get("event") == "joined")
        assert await members(admin, key_prefix, "late-room") == {me}
        await ws.close()


# -- 4. a worker paused past its TTL -----------------------------------------------------


async def test_a_worker_reaped_while_it_stalled_keeps_its_members_against_a_late_reaper(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    """A worker stalled past its TTL (GC, SIGSTOP) is claimed by a peer; it notices and
    registers again; a reaper still working from its old claim reaches the channels only
    afterwards (the race of a resumed SIGSTOP, made certain here by running the reaper's
    per-channel script from Redis itself)."""
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=1.0)
    keys = RedisKeys(key_prefix)
    channels = [f"room-{i}" for i in range(20)]
    async with (
        PubSubHub(settings=settings) as stalled_hub,
        PubSubHub(settings=settings) as peer,
        serve(build_app(stalled_hub)) as url,
    ):
        assert isinstance(peer.backend, RedisBackend)
        clients = [await connect(f"{url}/ws/{channel}") for channel in channels]
        await asyncio.gather(*(recv_until(ws, lambda m: m == {"count": 1}) for ws in clients))
        owners_then = {
            c: (await admin.hgetall(keys.owners(c))).popitem()[1].decode() for c in channels
        }

        async def all_back() -> bool:
            counts = [await admin.scard(keys.members(c)) for c in channels]
            return counts == [1] * len(channels)

        assert await peer.backend.reap(stalled_hub.backend.worker_id) == len(channels)
        await wait_for_async_condition(all_back, 4 * settings.heartbeat_ttl)
        for channel in channels:  # the late reaper, with what it claimed before
            await admin.eval(
                REAP_CHANNEL,
                4,
                *keys.presence(channel),
                "PUBLISH",
                keys.topic(channel),
                channel,
                "late-reaper",
                owners_then[channel],
                SEQ_IDLE_TTL_MS,
            )
        started = time.monotonic()
        await wait_for_async_condition(all_back, 2 * settings.heartbeat_ttl)
        print(f"presence whole {time.monotonic() - started:.2f}s after the late reaper")
        for ws in clients:
            await recv_until(ws, lambda m: m == {"count": 1}, timeout=2 * settings.heartbeat_ttl)
            await ws.close()


# -- 5. a client that stops reading ------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off_within_the_close_timeout(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, send_queue_size=4, close_timeout=1.0)
    hub = PubSubHub(settings=settings)
    async with hub, serve(build_app(hub), ws=PubSubWebSocketProtocol, ws_ping_interval=None) as url:
        slow = await stalled_client(f"{url}/ws/deaf")
        await wait_for_condition(lambda: hub.fanout.local_connection_count == 1, 5)
        for _ in range(60):
            if hub.fanout.local_connection_count == 0:
                break
            await hub.publish("deaf", {"pad": BIG})
        assert hub.fanout.local_connection_count == 0  # evicted
        evicted_at = time.monotonic()
        # Not left open: the server's end of the connection is gone within the close timeout.
        server_port = int(url.rsplit(":", 1)[1])
        await wait_for_condition(
            lambda: not _server_side_open(server_port, slow), settings.close_timeout + 2
        )
        print(f"slow client's connection ended {time.monotonic() - evicted_at:.2f}s after eviction")
        slow.transport.abort()


def _server_side_open(server_port: int, client: ClientConnection) -> bool:
    client_port = client.local_address[1]
    return any(
        c.laddr and c.raddr and c.laddr[1] == server_port and c.raddr[1] == client_port
        for c in psutil.Process().net_connections(kind="tcp")
    )


# -- 6. one client's wire format cannot carry a payload ----------------------------------


async def test_a_payload_json_cannot_carry_still_reaches_msgpack_clients_after_json_ones(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        as_json = [await connect(f"{url}/ws/bin") for _ in range(2)]
        as_msgpack = [await connect(f"{url}/ws/bin?format=msgpack") for _ in range(2)]
        for ws in as_json:
            await recv_until(ws, lambda m: m == {"count": 4})
        await hub.publish("bin", {"raw": b"\x00\xff"})
        for ws in as_msgpack:
            async with asyncio.timeout(5):
                while (message := msgpack.unpackb(await ws.recv())) != {"raw": b"\x00\xff"}:
                    assert "count" in message
        await hub.publish("bin", {"plain": 1})
        for ws in as_json:
            await recv_until(ws, lambda m: m == {"plain": 1})
        for ws in [*as_json, *as_msgpack]:
            await ws.close()


# -- 7. hooks and loops that fail --------------------------------------------------------


class HangingSocket(BasePubSubWebSocket):
    async def on_reconnect(self) -> None:
        await asyncio.Event().wait()  # never returns


async def test_a_hanging_reconnect_hook_does_not_stall_deliveries(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL)
    hub = PubSubHub(settings=settings)

    async def hang() -> None:
        await asyncio.Event().wait()

    hub.add_reconnect_hook(hang)
    reconnected = reconnect_signal(hub)
    app = FastAPI()

    @app.websocket("/ws/{channel}")
    async def endpoint(websocket: WebSocket, channel: str) -> None:
        await HangingSocket(websocket, channel, hub=hub).run()

    async with hub, serve(app) as url:
        ws = await connect(f"{url}/ws/hooks")
        await wait_for_condition(lambda: len(hub.get("hooks")) == 1, 5)
        await admin.client_kill_filter(_type="pubsub")
        await asyncio.wait_for(reconnected.wait(), 10)
        await hub.publish("hooks", {"still": "flowing"})
        assert await recv_json(ws) == {"still": "flowing"}
        await ws.close()


async def test_presence_and_publishing_recover_after_redis_ran_out_of_memory(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, heartbeat_ttl=TTL)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        first = await connect(f"{url}/ws/oom")
        await recv_until(first, lambda m: m == {"count": 1})
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")  # every write is refused
        refused = await connect(f"{url}/ws/oom")
        assert await close_code_of(refused) == CloseCode.TRY_AGAIN_LATER
        await hub.publish("oom", {"n": 1})  # PUBLISH needs no memory: it still works
        await recv_until(first, lambda m: m == {"n": 1})
        await first.close()  # its leave fails too, for now
        # Heartbeats fail too: the worker's heartbeat lapses while Redis refuses writes.
        heartbeat = RedisKeys(key_prefix).heartbeat(hub.backend.worker_id)
        await wait_for_async_condition(lambda: _gone(admin, heartbeat), 2 * BEAT)
        await admin.config_set("maxmemory", "0")
        second = await connect(f"{url}/ws/oom")
        await recv_until(second, lambda m: m == {"count": 1}, timeout=2 * BEAT + 5)
        await wait_for_async_condition(
            lambda: _equals(members(admin, key_prefix, "oom"), set(hub.get("oom")), 1), 2 * BEAT
        )
        await hub.publish("oom", {"n": 2})
        await recv_until(second, lambda m: m == {"n": 2})
        await second.close()


# -- 8. an outside publisher and the workers agree on history ----------------------------


async def test_an_outside_publisher_stores_on_channels_the_workers_keep_history_for(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    settings = make_settings(key_prefix, owned_redis.url, history_channels="news")
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/news")
        await recv_until(ws, lambda m: m == {"count": 1})
        # Configured as docs/deployment.md says: the URL and the key prefix, nothing else.
        outside = make_settings(key_prefix, owned_redis.url)
        await asyncio.to_thread(publish_sync, owned_redis.url, "news", {"n": 1}, settings=outside)
        message = await recv_until(ws, lambda m: "count" not in m)
        assert message["data"] == {"n": 1} and "id" in message
        assert await admin.xlen(RedisKeys(key_prefix).history("news")) == 1
        await ws.close()


async def _gone(admin: aioredis.Redis, key: str) -> bool:
    return not await admin.exists(key)


# -- 9. a lost link on a history channel, under load ---------------------------------------


async def test_a_lost_link_replays_the_gap_before_newer_messages_under_load(
    owned_redis: OwnedRedisServer, key_prefix: str, admin: aioredis.Redis
) -> None:
    """Messages stored while the worker's link was down are replayed, in order, before the
    live ones that arrive while the worker reloads its channels (fault matrix, issue 13:
    newer live messages went first and the replay then started after them)."""
    settings = make_settings(
        key_prefix, owned_redis.url, history_channels="kept", heartbeat_ttl=TTL
    )
    hub = PubSubHub(settings=settings)
    reconnected = reconnect_signal(hub)
    async with hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/kept")
        # Sockets in many channels: the worker reloads each after the link comes back.
        others = [await connect(f"{url}/ws/room-{i}") for i in range(50)]
        await recv_until(ws, lambda m: m == {"count": 1})
        published: list[int] = []

        async def publish(numbers: range) -> None:
            for n in numbers:
                with contextlib.suppress(PublishError):
                    await hub.publish("kept", {"n": n})
                    published.append(n)

        await publish(range(20))
        await admin.client_kill_filter(_type="pubsub")
        await asyncio.gather(publish(range(20, 400)), asyncio.wait_for(reconnected.wait(), 10))
        await publish(range(400, 450))
        received: list[int] = []
        async with asyncio.timeout(10):
            while not received or received[-1] != published[-1]:
                message = await recv_json(ws)
                if "data" in message:
                    received.append(message["data"]["n"])
        missing = sorted(set(published) - set(received))
        assert received == published, f"missing {missing}, received {len(received)}"
        for client in [ws, *others]:
            await client.close()


async def test_a_client_that_resumed_while_the_link_was_deaf_gets_the_gap_once(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """A client resumes (its own replay covers the gap) on a worker whose link is deaf;
    when the link is renewed the worker replays the same gap to its clients: the resumed
    client must not get it twice (fault matrix, issue 13: it did)."""
    proxy = DeafeningProxy("127.0.0.1", owned_redis.port)
    async with proxy.running():
        url_via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
        settings = make_settings(
            key_prefix,
            url_via_proxy,
            history_channels="kept",
            heartbeat_ttl=TTL,
            probe_interval=0.5,
            probe_timeout=0.5,
        )
        hub = PubSubHub(settings=settings)
        reconnected = reconnect_signal(hub)
        async with hub, serve(build_app(hub)) as url:
            staying = await connect(f"{url}/ws/kept")
            await recv_until(staying, lambda m: m == {"count": 1})
            await hub.publish("kept", {"n": 0})
            first = await recv_until(staying, lambda m: "id" in m)
            assert proxy.deafen_subscribers() == 1
            for n in (1, 2, 3):  # stored, not heard by the deaf link
                await hub.publish("kept", {"n": n})
            resumed = await connect(f"{url}/ws/kept?since={first['id']}")
            await asyncio.wait_for(reconnected.wait(), 10)  # the worker replays 1..3
            await hub.publish("kept", {"n": 4})
            for ws, expected in ((resumed, [1, 2, 3, 4]), (staying, [1, 2, 3, 4])):
                got: list[int] = []
                while not got or got[-1] != 4:
                    got.append((await recv_until(ws, lambda m: "id" in m))["data"]["n"])
                assert got == expected
            for ws in (staying, resumed):
                await ws.close()
