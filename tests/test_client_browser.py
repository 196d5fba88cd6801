"""``pubsub.js`` in real headless Chromium against real servers: reconnect and resume across a
killed worker and a restarted Redis, msgpack, joining and leaving further channels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Page

from fastapi_pubsub_cluster import PublishError, PubSubHub, PubSubSettings, RedisPublisher
from tests.apps.client_app import build_app
from tests.browser import chromium, client_page, events, requires_chromium, wait_for_event
from tests.live import serve, wait_for_condition
from tools.processes import ServerProcess, gunicorn_server
from tools.redis_servers import OwnedRedisServer

pytestmark = [pytest.mark.slow, requires_chromium]

HISTORY = "feed-.*"


@pytest.fixture
def durable_redis() -> Iterator[OwnedRedisServer]:
    """A redis-server of this test's own that keeps its data across a crash: every write is
    in the append-only file before it is acknowledged (``appendfsync always``)."""
    server = OwnedRedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def two_gunicorn_workers(
    durable_redis: OwnedRedisServer, key_prefix: str
) -> Iterator[ServerProcess]:
    """The client test app under gunicorn: two workers behind one port, on that Redis."""
    env = {
        "PUBSUB_REDIS_URL": durable_redis.url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HISTORY_CHANNELS": HISTORY,
        "PUBSUB_REDIS_TIMEOUT": "1",
        "PUBSUB_RECONNECT_DELAY_INITIAL": "0.05",
        "PUBSUB_RECONNECT_DELAY_MAX": "0.5",
    }
    with gunicorn_server("tests.apps.client_server:app", env, workers=2) as server:
        yield server


class NumberedPublisher:
    """Publishes ``{"n": 0}``, ``{"n": 1}``, ... to each of ``channels`` in turn from this
    process, through Redis alone, and records which publishes Redis acknowledged and which
    failed (a failed one may still have been stored: the reply is what was lost)."""

    def __init__(self, publisher: RedisPublisher, channels: list[str]) -> None:
        self.publisher = publisher
        self.channels = channels
        self.acked: dict[str, list[int]] = {channel: [] for channel in channels}
        self.failed: dict[str, list[int]] = {channel: [] for channel in channels}
        self.next = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            n = self.next
            for channel in self.channels:
                try:
                    await self.publisher.publish(channel, {"n": n})
                except PublishError:
                    self.failed[channel].append(n)
                    await asyncio.sleep(0.05)  # Redis is down: no need to spin
                else:
                    self.acked[channel].append(n)
            self.next = n + 1
            await asyncio.sleep(0.01)

    async def wait_for_new_failures(self, count: int, timeout: float) -> None:
        """Until every channel's publishes have failed ``count`` more times than now."""
        before = [len(failed) for failed in self.failed.values()]
        await wait_for_condition(
            lambda: all(
                len(failed) >= n + count
                for failed, n in zip(self.failed.values(), before, strict=True)
            ),
            timeout=timeout,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Publishing meanwhile; after, the last round is finished (nothing left in flight)."""
        task = asyncio.create_task(self.run())
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.wait_for(task, 30)


async def wait_until_seen(page: Page, channel: str, n: int) -> None:
    """Wait until the page's client received ``{"n": n}`` (or a later one) on ``channel``."""
    await wait_for_event(page, "message", f"p.channel === {channel!r} && p.data.n >= {n}")


async def test_page_resumes_history_channels_across_a_killed_worker_and_a_redis_restart(
    two_gunicorn_workers: ServerProcess, durable_redis: OwnedRedisServer, key_prefix: str
) -> None:
    """A page on two history channels (its own, and one it joined) while messages are
    published to both: ``kill -9`` of the worker that holds its socket, then a crash and
    restart of Redis. The page reconnects by itself and, on each channel, sees every message
    in order, none twice, no gap.

    What "misses nothing" means here: every message whose publish Redis acknowledged reaches
    the page. That rests on the history surviving, as Redis persistence makes it (AOF with
    ``appendfsync always``: acknowledged means on disk); with a Redis that loses its data on
    restart, the client would be told of a gap (``gap`` event) instead. A publish that failed
    while Redis was down was lost to the publisher, not the client: it may or may not have
    been stored before the crash, so the page may or may not see it, but never twice or out
    of order.
    """
    channels = ["feed-a", "feed-b"]
    settings = PubSubSettings(key_prefix=key_prefix, redis_timeout=0.5)
    async with (
        chromium() as browser,
        RedisPublisher(durable_redis.url, settings=settings) as publisher,
    ):
        page = await client_page(
            browser, two_gunicorn_workers.base, "/ws/feed-a", minDelay=100, maxDelay=1000
        )
        await wait_for_event(page, "open")
        await page.evaluate("() => window.client.join('feed-b')")
        numbered = NumberedPublisher(publisher, channels)
        async with numbered.running():
            for channel in channels:
                await wait_until_seen(page, channel, 20)

            # 1. The worker that holds the page's socket dies without a goodbye.
            await page.wait_for_function("() => window.pids.length === 1")
            (pid,) = await page.evaluate("() => window.pids")
            assert pid in two_gunicorn_workers.worker_pids()
            first_id = await page.evaluate("() => window.client.connectionId")
            os.kill(pid, signal.SIGKILL)
            await wait_for_event(page, "open", "p.resumed", count=1)
            mark = numbered.next
            for channel in channels:
                await wait_until_seen(page, channel, mark + 20)
            assert await page.evaluate("() => window.client.connectionId") != first_id
            assert await page.evaluate("() => window.pids.at(-1)") != pid

            # 2. Redis crashes, stays down while publishes fail, and comes back with its
            # data; the page's socket may stay open meanwhile.
            durable_redis.stop()
            await numbered.wait_for_new_failures(3, timeout=15)
            durable_redis.start()
            mark = numbered.next
            for channel in channels:
                await wait_until_seen(page, channel, mark + 20)

        # Everything acknowledged arrives, whatever was in flight when publishing stopped.
        for channel in channels:
            await wait_until_seen(page, channel, numbered.acked[channel][-1])
        received = await events(page, "message")
        assert await events(page, "gap") == []
        for channel in channels:
            seen = [m["data"]["n"] for m in received if m["channel"] == channel]
            ids = [m["id"] for m in received if m["channel"] == channel]
            assert seen == sorted(set(seen)), f"{channel}: out of order or twice"
            assert ids == sorted(set(ids), key=stream_id_key), f"{channel}: ids not increasing"
            acked, failed = set(numbered.acked[channel]), set(numbered.failed[channel])
            assert acked <= set(seen), f"{channel}: missed {sorted(acked - set(seen))}"
            assert set(seen) <= acked | failed
        print(
            f"acked {[len(v) for v in numbered.acked.values()]}, "
            f"failed while Redis was down {[len(v) for v in numbered.failed.values()]}"
        )


def stream_id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


# -- the client's features against one server in this process, on each backend ---------------


@pytest.fixture
async def client_app_url(settings: PubSubSettings) -> AsyncIterator[tuple[PubSubHub, str]]:
    """The client test app around a hub of the parametrised backend; its ``http://`` URL."""
    history = settings.with_changes(history_channels=HISTORY)
    async with PubSubHub(settings=history) as hub, serve(build_app(hub)) as url:
        yield hub, url.replace("ws://", "http://")


async def test_msgpack_frames_decode_and_client_messages_encode_in_the_browser(
    client_app_url: tuple[PubSubHub, str],
) -> None:
    hub, base = client_app_url
    payload: dict[str, Any] = {
        "text": "héllo ✓ " + "x" * 300,
        "ints": [0, 1, 127, 128, -1, -33, 70_000, -70_000, 2**32 + 5, -(2**40)],
        "floats": [0.5, -1.25e10],
        "flags": [True, False, None],
        "nested": {"list": [{"a": 1}], "empty": {}, "long": list(range(40))},
    }
    async with chromium() as browser:
        page = await client_page(browser, base, "/ws/feed-m", format="msgpack")
        await wait_for_event(page, "open")
        await hub.publish("feed-m", payload)
        await hub.publish("feed-m", {"bin": b"\x00\xff" * 3})
        await wait_for_event(page, "message", "p.data.bin !== undefined")
        first, second = await events(page, "message")
        assert first["data"] == payload
        assert first["channel"] == "feed-m" and first["id"].count("-") == 1
        binary = "() => Array.from(window.events.find((e) => e.payload.data?.bin).payload.data.bin)"
        assert await page.evaluate(binary) == [0, 255] * 3
        assert stream_id_key(second["id"]) > stream_id_key(first["id"])

        # The client's own msgpack encoding, read back by the server, echoed to the channel.
        sent = {"echoed": payload["nested"], "n": -(2**40), "f": 0.5, "s": "ünïcode"}
        assert await page.evaluate("(data) => window.client.send(data)", sent) is True
        await wait_for_event(page, "message", "p.data.echo !== undefined")
        echoes = [m for m in await events(page, "message") if "echo" in m["data"]]
        assert echoes[0]["data"]["echo"] == sent

        # Stream ids compare as numbers, however long their parts.
        compare = "([a, b]) => Math.sign(window.pubsub.compareStreamIds(a, b))"
        for a, b, sign in [
            ("1700000000000-9", "1700000000000-10", -1),
            ("999-0", "1000-0", -1),
            ("5-5", "5-5", 0),
            ("1-18446744073709551615", "1-18446744073709551614", 1),
        ]:
            assert await page.evaluate(compare, [a, b]) == sign, (a, b)


async def test_joining_and_leaving_a_second_channel_and_a_refused_join(
    client_app_url: tuple[PubSubHub, str],
) -> None:
    hub, base = client_app_url
    async with chromium() as browser:
        page = await client_page(browser, base, "/ws/lobby")
        await wait_for_event(page, "open")
        assert await page.evaluate("() => window.client.state") == "open"

        await page.evaluate("() => window.client.join('room-2')")
        assert await page.evaluate("() => window.client.channels") == ["lobby", "room-2"]
        await wait_for_event(page, "presence", "p.channel === 'room-2' && p.count === 1")
        await hub.publish("room-2", {"hello": "room-2"})
        await hub.publish("lobby", {"hello": "lobby"})
        await wait_for_event(page, "message", "p.channel === 'lobby'")
        await wait_for_event(page, "message", "p.channel === 'room-2'")

        # A refused join rejects with the server's reason; the socket stays open.
        refused = await page.evaluate(
            "() => window.client.join('secret-x').then(() => null, (error) => error.message)"
        )
        assert isinstance(refused, str) and refused
        assert await events(page, "refused") == [
            {"channel": "secret-x", "reason": refused, "retry": False}
        ]
        assert await page.evaluate("() => window.client.channels") == ["lobby", "room-2"]
        # ... and so does leaving the own channel.
        assert (
            await page.evaluate(
                "() => window.client.leave('lobby').then(() => 'left', () => 'refused')"
            )
            == "refused"
        )

        await page.evaluate("() => window.client.leave('room-2')")
        assert await events(page, "left") == [{"channel": "room-2"}]
        assert await page.evaluate("() => window.client.channels") == ["lobby"]
        await hub.publish("room-2", {"after": "leave"})
        await hub.publish("lobby", {"marker": True})
        await wait_for_event(page, "message", "p.data.marker === true")
        assert [m["data"] for m in await events(page, "message") if m["channel"] == "room-2"] == [
            {"hello": "room-2"}
        ]
        assert await page.evaluate("() => window.client.state") == "open"
        assert [e["code"] for e in await events(page, "close")] == []


async def test_the_client_reconnects_after_server_closes_and_resumes_until_closed(
    client_app_url: tuple[PubSubHub, str],
) -> None:
    """Going away (1001), internal error (1011), service restart (1012), try again later
    (1013): each time the client comes back by itself, after a jittered delay within its
    cap, and resumes its history channel where it was. Its own ``close()`` is final."""
    hub, base = client_app_url
    codes = [1001, 1011, 1012, 1013]
    async with chromium() as browser:
        page = await client_page(browser, base, "/ws/feed-r", minDelay=50, maxDelay=400)
        await wait_for_event(page, "open")
        await hub.publish("feed-r", {"n": 0})
        for n, code in enumerate(codes, start=1):
            await wait_for_event(page, "message", f"p.data.n === {n - 1}")
            await page.evaluate("(code) => window.client.send({ close_with: code })", code)
            await wait_for_event(page, "close", f"p.code === {code}")
            await hub.publish("feed-r", {"n": n})  # while it is away, or just back
            await wait_for_event(page, "open", "p.resumed", count=n)
        await wait_for_event(page, "message", f"p.data.n === {len(codes)}")

        closes = await events(page, "close")
        assert [c["code"] for c in closes] == codes
        # Full jitter: somewhere below the cap, which doubles from minDelay (welcomes reset it).
        assert all(0 <= c["reconnectIn"] <= 50 for c in closes), closes
        received = [m["data"]["n"] for m in await events(page, "message")]
        assert received == list(range(len(codes) + 1))  # none lost, none twice

        await page.evaluate("() => window.client.close()")
        assert await page.evaluate("() => window.client.state") == "closed"
        assert (await events(page, "close"))[-1] == {
            "code": 1000,
            "reason": "closed by the client",
            "reconnectIn": None,
        }
        await wait_for_condition(lambda: hub.fanout.local_connection_count == 0, timeout=10)
        rejected = "() => window.client.join('room-9').then(() => 'joined', (e) => e.message)"
        assert await page.evaluate(rejected) == "the client is closed"


async def test_a_resume_from_further_back_than_history_is_a_gap_event(
    settings: PubSubSettings,
) -> None:
    """History keeps 5 messages (a Redis stream trims by whole nodes of 100: 250 are enough
    to lose the first); a page resuming after the first is told of the gap, then gets what
    is kept."""
    small = settings.with_changes(history_channels=HISTORY, history_size=5)
    async with (
        PubSubHub(settings=small) as hub,
        serve(build_app(hub)) as url,
        chromium() as browser,
    ):
        base = url.replace("ws://", "http://")
        watcher = await client_page(browser, base, "/ws/feed-g")
        await wait_for_event(watcher, "open")
        await hub.publish("feed-g", {"n": 0})
        await wait_for_event(watcher, "message")
        first = await watcher.evaluate("() => window.client.lastId('feed-g')")
        for n in range(1, 250):
            await hub.publish("feed-g", {"n": n})

        page = await client_page(browser, base, f"/ws/feed-g?since={first}")
        await wait_for_event(page, "message", "p.data.n === 249")
        (gap,) = await events(page, "gap")
        assert gap["channel"] == "feed-g" and gap["since"] == first
        assert stream_id_key(gap["oldest"]) > stream_id_key(first)
        kept = [m["data"]["n"] for m in await events(page, "message")]
        assert kept == list(range(250 - len(kept), 250)) and len(kept) >= 5


async def test_a_join_rejects_at_once_where_the_socket_class_takes_no_client_joins(
    client_app_url: tuple[PubSubHub, str],
) -> None:
    """The server's welcome says whether its socket class takes joins: a join asked before
    the socket opened, and one asked after, are refused instead of waiting forever."""
    hub, base = client_app_url
    async with chromium() as browser:
        page = await client_page(browser, base, "/own/lobby")
        await page.evaluate(
            "() => { window.early = window.client.join('room-1')"
            ".then(() => 'joined', (e) => e.message); }"
        )
        await wait_for_event(page, "open")
        early = await page.evaluate("() => window.early")
        later = await page.evaluate(
            "() => window.client.join('room-2').then(() => 'joined', (e) => e.message)"
        )
        assert early == later == "this server's socket does not take joins from clients"
        assert [r["channel"] for r in await events(page, "refused")] == ["room-1", "room-2"]
        assert await page.evaluate("() => window.client.channels") == ["lobby"]
        await hub.publish("lobby", {"still": "open"})
        await wait_for_event(page, "message", "p.data.still === 'open'")
        assert await events(page, "close") == []


async def test_a_refused_resume_position_is_dropped_for_a_gap_and_a_fresh_join(
    client_app_url: tuple[PubSubHub, str],
) -> None:
    """The server refuses a resume position that is not a stream id (1008): the client
    reports a gap, forgets the position and joins afresh, instead of retrying it forever."""
    hub, base = client_app_url
    async with chromium() as browser:
        page = await client_page(browser, base, "/ws/feed-b?since=yesterday", minDelay=50)
        await wait_for_event(page, "open")
        (gap,) = await events(page, "gap")
        assert gap["channel"] == "feed-b" and gap["since"] == "yesterday"
        assert gap["oldest"] is None and "stream id" in gap["reason"]
        assert [c["code"] for c in await events(page, "close")] == [1008]
        await hub.publish("feed-b", {"n": 1})
        await wait_for_event(page, "message", "p.data.n === 1")
        assert await page.evaluate("() => window.client.lastId('feed-b')") != "yesterday"
