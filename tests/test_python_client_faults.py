"""The Python client against two real gunicorn workers on a real Redis of the test's own,
while numbered messages are published to two history channels (its own, and one it joined):
a worker killed with ``kill -9``, and Redis restarted with its data, then without it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from fastapi_pubsub_cluster import PubSubSettings, RedisPublisher
from fastapi_pubsub_cluster.remote import Closed, Direct, Event, Gap, Message, Opened, PubSubClient
from tests.live import wait_for_condition
from tests.test_client_browser import NumberedPublisher
from tools.processes import ServerProcess, gunicorn_server
from tools.redis_servers import OwnedRedisServer

pytestmark = pytest.mark.slow

HISTORY = "feed-.*"
CHANNELS = ["feed-a", "feed-b"]


@pytest.fixture(params=["durable", "empty"])
def restarted_redis(request: pytest.FixtureRequest) -> Iterator[OwnedRedisServer]:
    """A redis-server of this test's own: ``durable`` keeps its data across a crash (every
    write is in the append-only file before it is acknowledged), ``empty`` loses it."""
    durable = ["--appendonly", "yes", "--appendfsync", "always"]
    server = OwnedRedisServer(extra_args=durable if request.param == "durable" else [])
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def durable_redis() -> Iterator[OwnedRedisServer]:
    server = OwnedRedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        yield server
    finally:
        server.close()


def two_workers(
    redis: OwnedRedisServer, key_prefix: str
) -> contextlib.AbstractContextManager[ServerProcess]:
    """The client test app under gunicorn: two workers behind one port, on ``redis``."""
    env = {
        "PUBSUB_REDIS_URL": redis.url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HISTORY_CHANNELS": HISTORY,
        "PUBSUB_REDIS_TIMEOUT": "1",
        "PUBSUB_RECONNECT_DELAY_INITIAL": "0.05",
        "PUBSUB_RECONNECT_DELAY_MAX": "0.5",
    }
    return gunicorn_server("tests.apps.client_server:app", env, workers=2)


@dataclass
class Recorder:
    """Reads every event of a client as it comes, with the time it came."""

    client: PubSubClient
    events: list[tuple[float, Event]] = field(default_factory=list)

    async def run(self) -> None:
        async for event in self.client.events():
            self.events.append((time.monotonic(), event))

    def seen(self, channel: str) -> list[int]:
        return [
            e.data["n"]
            for _, e in self.events
            if isinstance(e, Message) and e.channel == channel and "n" in e.data
        ]

    def of(self, kind: type[Event]) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]

    def pids(self) -> list[int]:
        return [e.data["pid"] for _, e in self.of(Direct) if isinstance(e.data, dict)]  # type: ignore[union-attr]

    async def wait_until_seen(self, n: int, timeout: float = 20) -> None:
        await wait_for_condition(
            lambda: all(max(self.seen(c), default=-1) >= n for c in CHANNELS), timeout
        )


@contextlib.asynccontextmanager
async def recorded_client(base: str) -> AsyncIterator[Recorder]:
    """A client of ``feed-a`` that joined ``feed-b``, every event it reads recorded."""
    async with PubSubClient(f"{base}/ws/feed-a", min_delay=0.05, max_delay=0.5) as client:
        await client.join("feed-b")
        recorder = Recorder(client)
        task = asyncio.create_task(recorder.run())
        try:
            yield recorder
        finally:
            await client.close()
            await asyncio.wait_for(task, 10)


def assert_in_order_once(recorder: Recorder, numbered: NumberedPublisher) -> None:
    """On each channel: in order, none twice, every acknowledged publish seen, and nothing
    that was not published (a failed publish may or may not have been stored)."""
    for channel in CHANNELS:
        seen = recorder.seen(channel)
        assert seen == sorted(set(seen)), f"{channel}: out of order or twice"
        acked, failed = set(numbered.acked[channel]), set(numbered.failed[channel])
        assert acked <= set(seen), f"{channel}: missed {sorted(acked - set(seen))}"
        assert set(seen) <= acked | failed


async def test_a_client_resumes_exactly_across_a_worker_killed_mid_stream(
    durable_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = PubSubSettings(key_prefix=key_prefix, redis_timeout=0.5)
    with two_workers(durable_redis, key_prefix) as server:
        async with (
            RedisPublisher(durable_redis.url, settings=settings) as publisher,
            recorded_client(server.base) as recorder,
        ):
            numbered = NumberedPublisher(publisher, CHANNELS)
            async with numbered.running():
                await recorder.wait_until_seen(20)
                await wait_for_condition(lambda: len(recorder.pids()) == 1, 10)
                (pid,) = recorder.pids()
                assert pid in server.worker_pids()
                os.kill(pid, signal.SIGKILL)
                await wait_for_condition(lambda: len(recorder.of(Opened)) == 2, 20)
                await recorder.wait_until_seen(numbered.next + 20)
            for channel in CHANNELS:
                await wait_for_condition(
                    lambda c=channel: numbered.acked[c][-1] in recorder.seen(c), 20
                )
        ((closed_at, closed),) = recorder.of(Closed)[:1]
        opened_at, opened = recorder.of(Opened)[1]
        assert isinstance(opened, Opened) and opened.resumed and opened_at > closed_at
        assert recorder.pids()[-1] != pid
        assert not recorder.of(Gap)
        assert not any(numbered.failed.values())
        assert_in_order_once(recorder, numbered)
        print(
            f"worker killed: closed {closed}, reconnected in {opened_at - closed_at:.3f} s; "
            f"received {[len(recorder.seen(c)) for c in CHANNELS]}, 0 lost, 0 twice"
        )


async def test_a_client_resumes_across_a_redis_restart_or_is_told_of_the_gap(
    restarted_redis: OwnedRedisServer, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    """With its data back (AOF), Redis's restart costs the client nothing: every
    acknowledged message arrives, in order, once, and no gap. Without it, each channel's
    history is gone: the client is told (a ``Gap`` per channel), and from there on it
    gets every acknowledged message, in order, once."""
    durable = "durable" in request.node.callspec.id
    # The publisher knows the history channels itself: after an empty restart it does not
    # wait for the workers to announce them again.
    settings = PubSubSettings(key_prefix=key_prefix, redis_timeout=0.5, history_channels=HISTORY)
    with two_workers(restarted_redis, key_prefix) as server:
        async with (
            RedisPublisher(restarted_redis.url, settings=settings) as publisher,
            recorded_client(server.base) as recorder,
        ):
            numbered = NumberedPublisher(publisher, CHANNELS)
            async with numbered.running():
                await recorder.wait_until_seen(20)
                restarted_redis.stop()
                await numbered.wait_for_new_failures(3, timeout=15)
                restarted_redis.start()
                await recorder.wait_until_seen(numbered.next + 20, timeout=30)
            for channel in CHANNELS:
                await wait_for_condition(
                    lambda c=channel: numbered.acked[c][-1] in recorder.seen(c), 20
                )
    gaps = [e for _, e in recorder.of(Gap)]
    if durable:
        assert not gaps
        assert_in_order_once(recorder, numbered)
    else:
        assert {g.channel for g in gaps} == set(CHANNELS), gaps  # type: ignore[union-attr]
        for channel in CHANNELS:
            seen = recorder.seen(channel)
            assert seen == sorted(set(seen)), f"{channel}: out of order or twice"
            assert set(seen) <= set(numbered.acked[channel]) | set(numbered.failed[channel])
            after_gap = seen_after_last_gap(recorder, channel)
            acked_after = {n for n in numbered.acked[channel] if n >= after_gap[0]}
            assert acked_after <= set(after_gap), f"{channel}: missed after the gap"
    print(
        f"redis restart ({'durable' if durable else 'empty'}): gaps {len(gaps)}, "
        f"received {[len(recorder.seen(c)) for c in CHANNELS]}, "
        f"failed while down {[len(f) for f in numbered.failed.values()]}"
    )


def seen_after_last_gap(recorder: Recorder, channel: str) -> list[int]:
    last = max(
        i for i, (_, e) in enumerate(recorder.events) if isinstance(e, Gap) and e.channel == channel
    )
    return [
        e.data["n"]
        for _, e in recorder.events[last:]
        if isinstance(e, Message) and e.channel == channel
    ]
