"""One configuration, measured: start the server and clients, connect, warm up, measure, stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmarks.client_pool import ClientPool, Counts
from benchmarks.metrics import percentile
from benchmarks.publishers import LARGE_BODY, PADDING, Publisher, make_payload, publisher_for
from benchmarks.redis_server import BenchRedis
from benchmarks.servers import RunningServer, running_server
from benchmarks.targets import HISTORY_CHANNELS, Role, Target

WARMUP_TIMEOUT = 60.0
STALL_TIMEOUT = 5.0
DRAIN_TIMEOUT = 120.0
SETTLE_SECONDS = 1.0

Values = dict[str, float | None]


@dataclass
class Measurement:
    """The figures of one run of one configuration."""

    scenario: str
    target: str
    repeat: int
    values: Values = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None


@dataclass
class Session:
    target: Target
    server: RunningServer
    pool: ClientPool
    publisher: Publisher
    redis: BenchRedis
    #: Subscribers per channel.
    layout: dict[str, int]
    idle_rss: int = 0
    #: The run's key prefix (the apps' and the publisher's).
    prefix: str = ""


def server_env(target: Target, redis_url: str, prefix: str) -> dict[str, str]:
    """The server's environment: its Redis, the run's key prefix, its own settings."""
    if target.role is Role.OURS:
        return {
            "PUBSUB_REDIS_URL": redis_url if target.uses_redis else "",
            "PUBSUB_KEY_PREFIX": prefix,
            "PUBSUB_HISTORY_CHANNELS": HISTORY_CHANNELS if target.history else "",
            **dict(target.env),
        }
    return {"BENCH_REDIS_URL": redis_url, "BENCH_PREFIX": prefix, **dict(target.env)}


@asynccontextmanager
async def session(
    target: Target, redis: BenchRedis, layout: dict[str, int], deflate_share: float = 0.0
) -> AsyncIterator[Session]:
    """Server, clients and publisher for ``layout``, connected and warmed up; all stopped after.
    ``deflate_share`` of the clients offer permessage-deflate (as browsers do)."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    try:
        async with _connected(target, redis, layout, prefix, deflate_share) as live:
            yield live
    finally:
        await asyncio.to_thread(redis.delete_prefix, prefix)


@asynccontextmanager
async def _connected(
    target: Target, redis: BenchRedis, layout: dict[str, int], prefix: str, deflate_share: float
) -> AsyncIterator[Session]:
    with running_server(target, server_env(target, redis.url, prefix)) as server:
        baseline_rss = server.rss_bytes()
        pool = ClientPool(target.protocol)
        try:
            publisher = publisher_for(target, server.port, redis.url, prefix)
            await publisher.start()
            try:
                connections = [
                    (target.client_url(server.port, channel), channel)
                    for channel, count in layout.items()
                    for _ in range(count)
                ]
                # The compressing clients spread evenly (over channels and workers too).
                offers = [
                    (url, channel, int((i + 1) * deflate_share) > int(i * deflate_share))
                    for i, (url, channel) in enumerate(connections)
                ]
                live = Session(target, server, pool, publisher, redis, layout, prefix=prefix)
                try:
                    await pool.connect(offers)
                    await warm_up(live)
                except Exception as exc:
                    raise RuntimeError(f"{exc} [server log: {server.log_tail()}]") from exc
                await wait_until_quiet(live)
                await asyncio.sleep(SETTLE_SECONDS)
                live.idle_rss = server.rss_bytes() - baseline_rss
                await pool.collect(reset=True)
                yield live
            finally:
                await publisher.close()
        finally:
            pool.close()


async def warm_up(live: Session) -> None:
    """Publish to every channel until every connection has received something.

    This is also how we know every subscription is in place (a join may complete after the
    websocket handshake); a system that never gets there fails the configuration.
    """
    total = sum(live.layout.values())
    deadline = time.monotonic() + WARMUP_TIMEOUT
    sequence = 0
    while True:
        for channel in live.layout:
            await live.publisher.publish(channel, make_payload(-1))
            sequence += 1
        round_end = time.monotonic() + 1.0
        while time.monotonic() < round_end:
            counts = await live.pool.counts()
            if counts.heard_from >= total:
                return
            await asyncio.sleep(0.05)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {counts.heard_from}/{total} connections ever received a message "
                f"after {sequence} warm-up publications"
            )


async def wait_until_quiet(live: Session, quiet: float = 0.5, timeout: float = 60.0) -> None:
    """Let late warm-up frames arrive, so that they are not counted in the measurement."""
    deadline = time.monotonic() + timeout
    previous = (await live.pool.counts()).received
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        received = (await live.pool.counts()).received
        if received == previous:
            return
        previous = received


async def wait_for_deliveries(live: Session, expected: int) -> Counts:
    """Poll the clients until ``expected`` frames arrived, or nothing arrives for a while."""
    last_progress = time.monotonic()
    deadline = last_progress + DRAIN_TIMEOUT
    previous = -1
    while True:
        counts = await live.pool.counts()
        now = time.monotonic()
        if counts.received >= expected:
            return counts
        if counts.received != previous:
            previous = counts.received
            last_progress = now
        if now - last_progress > STALL_TIMEOUT or now > deadline:
            return counts
        await asyncio.sleep(0.02)


async def burst(live: Session, messages: int, prefix: str, body: Any = PADDING) -> Values:
    """Publish ``messages`` back to back, round-robin over the channels; CPU per delivery."""
    channels = list(live.layout)
    expected = sum(live.layout[channels[i % len(channels)]] for i in range(messages))
    commands_before = live.redis.command_calls() if live.target.uses_redis else 0
    redis_before = RedisCpu.read(live)
    cpu_before = live.server.cpu_snapshot()
    started_us = time.time_ns() // 1000
    for sequence in range(messages):
        await live.publisher.publish(
            channels[sequence % len(channels)], make_payload(sequence, body)
        )
    await wait_for_deliveries(live, expected)
    cpu = live.server.cpu_delta(cpu_before, live.server.cpu_snapshot())
    redis_cpu = RedisCpu.read(live).minus(redis_before)
    commands = live.redis.command_calls() - commands_before if live.target.uses_redis else None
    collected = await live.pool.collect(reset=True)
    received = collected.received
    elapsed = max(1e-6, (collected.last_receipt_us - started_us) / 1e6)
    per = 1e6 / received if received else None
    user, system = cpu.split()
    return {
        f"{prefix}cpu_user_us": user * per if per else None,
        f"{prefix}cpu_sys_us": system * per if per else None,
        f"{prefix}cpu_us": cpu.total * per if per else None,
        f"{prefix}deliveries_per_s": received / elapsed if received else None,
        f"{prefix}lost": float(expected - received),
        f"{prefix}wire_bytes_per_dlv": collected.wire_bytes / received if received else None,
        f"{prefix}redis_cmds_per_broadcast": commands / messages if commands is not None else None,
        f"{prefix}redis_cpu_us": redis_cpu.psutil_total * per if per and live.redis.owned else None,
        **redis_cpu.per_broadcast(live, messages, prefix),
    }


@dataclass
class RedisCpu:
    """CPU seconds of every Redis node, as psutil sees the process (10 ms clock ticks) and
    as the node reports itself in INFO cpu (getrusage, microseconds)."""

    psutil_nodes: list[float]
    info_nodes: list[float]

    @classmethod
    def read(cls, live: Session) -> RedisCpu:
        if not live.target.uses_redis:
            return cls([], [])
        return cls(live.redis.cpu_by_node(), live.redis.info_cpu_by_node())

    def minus(self, before: RedisCpu) -> RedisCpu:
        return RedisCpu(
            [a - b for a, b in zip(self.psutil_nodes, before.psutil_nodes, strict=True)],
            [a - b for a, b in zip(self.info_nodes, before.info_nodes, strict=True)],
        )

    @property
    def psutil_total(self) -> float:
        return sum(self.psutil_nodes)

    def per_broadcast(self, live: Session, messages: int, prefix: str) -> Values:
        """Redis CPU per published message (all nodes together) and the busiest node's share
        of it (1.0 on one Redis; 1/3 would be an even spread over three shards)."""
        if not live.target.uses_redis or messages <= 0:
            return {}
        values: Values = {}
        for source, nodes in (("", self.psutil_nodes), ("info_", self.info_nodes)):
            total = sum(nodes)
            values[f"{prefix}redis_{source}cpu_us_per_broadcast"] = (
                total * 1e6 / messages if nodes else None
            )
            values[f"{prefix}redis_{source}max_node_share"] = (
                max(nodes) / total if nodes and total > 0 else None
            )
        return values


async def steady(live: Session, rate: float, seconds: float, prefix: str) -> Values:
    """Publish at ``rate`` msg/s for ``seconds``; publish-to-receive latency percentiles."""
    channels = list(live.layout)
    messages = max(2, round(rate * seconds))
    expected = sum(live.layout[channels[i % len(channels)]] for i in range(messages))
    cpu_before = live.server.cpu_snapshot()
    start = time.monotonic()
    for sequence in range(messages):
        delay = start + sequence / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await live.publisher.publish(channels[sequence % len(channels)], make_payload(sequence))
    await wait_for_deliveries(live, expected)
    cpu = live.server.cpu_delta(cpu_before, live.server.cpu_snapshot())
    collected = await live.pool.collect(reset=True)
    latencies_ms = [x / 1000 for x in collected.latencies_us]
    received = collected.received
    return {
        f"{prefix}p50_ms": percentile(latencies_ms, 0.50),
        f"{prefix}p99_ms": percentile(latencies_ms, 0.99),
        f"{prefix}lost": float(expected - received),
        f"{prefix}cpu_us": cpu.total * 1e6 / received if received else None,
    }


def burst_messages(subscribers: int, deliveries: int, minimum: int) -> int:
    return max(minimum, deliveries // max(1, subscribers))


async def measure_fanout(
    target: Target,
    redis: BenchRedis,
    subscribers: int,
    *,
    burst_deliveries: int,
    min_burst_messages: int,
    steady_seconds: float,
    light_seconds: float,
) -> Values:
    """Scenario (a): one publisher, ``subscribers`` sockets on one channel."""
    async with session(target, redis, {"fanout": subscribers}) as live:
        values: Values = {"rss_kib_per_conn": live.idle_rss / 1024 / subscribers}
        messages = burst_messages(subscribers, burst_deliveries, min_burst_messages)
        values.update(await burst(live, messages, "burst_"))
        values.update(await steady(live, 10.0, steady_seconds, "steady10_"))
        values.update(await steady(live, 2.0, light_seconds, "light2_"))
        return values


async def measure_channels(
    target: Target,
    redis: BenchRedis,
    channels: int,
    per_channel: int,
    messages: int,
    steady_seconds: float = 0.0,
) -> Values:
    """Scenario (b): many channels with a few subscribers each, messages round-robin: a
    burst, then a steady rate (each channel about once a second, ``steady_rate``)."""
    layout = {f"room-{index}": per_channel for index in range(channels)}
    async with session(target, redis, layout) as live:
        values = await burst(live, messages, "burst_")
        if steady_seconds > 0:
            values.update(await steady(live, float(channels), steady_seconds, "steady_"))
        return values


PAYLOADS: dict[str, Any] = {"100B": PADDING, "10KB": LARGE_BODY}


async def measure_deflate(
    target: Target,
    redis: BenchRedis,
    subscribers: int,
    *,
    payload: str,
    deflate_share: float,
    deliveries: int,
) -> Values:
    """Clients that offer permessage-deflate (``deflate_share`` of them, beside uncompressed
    ones), one channel: CPU per delivery and bytes on the wire per delivery, for a ~100-byte
    or a ~10 KB payload."""
    async with session(target, redis, {"fanout": subscribers}, deflate_share) as live:
        messages = max(5, deliveries // subscribers)
        return await burst(live, messages, "burst_", PAYLOADS[payload])


async def measure_idle(target: Target, redis: BenchRedis, connections: int) -> Values:
    """Scenario (c): server memory per idle connection, after the connections settle."""
    async with session(target, redis, {"idle": connections}) as live:
        return {"rss_kib_per_conn": live.idle_rss / 1024 / connections}


async def measure_cluster(
    target: Target, redis: BenchRedis, channels: int, per_channel: int, messages: int
) -> Values:
    """Many channels on one Redis or spread over the shards of a Redis Cluster: the
    channels scenario, with Redis CPU per broadcast per node (``burst``)."""
    values = await measure_channels(target, redis, channels, per_channel, messages)
    values["redis_nodes"] = float(len(redis.node_urls))
    return values


async def measure_history(
    target: Target,
    redis: BenchRedis,
    subscribers: int,
    *,
    burst_messages: int,
    steady_seconds: float,
    light_seconds: float,
    stored_messages: int,
) -> Values:
    """The cost of history: the fan-out workload (burst, 10 and 2 msg/s), then Redis memory
    and CPU for ``stored_messages`` published to a channel with no subscribers."""
    async with session(target, redis, {"fanout": subscribers}) as live:
        values: Values = {}
        values.update(await burst(live, burst_messages, "burst_"))
        values.update(await steady(live, 10.0, steady_seconds, "steady10_"))
        values.update(await steady(live, 2.0, light_seconds, "light2_"))
        values.update(await store(live, stored_messages, "store_"))
        return values


async def store(live: Session, messages: int, prefix: str) -> Values:
    """Publish ``messages`` to ``fanout-stored`` (no subscribers): Redis memory growth (INFO
    used_memory; and MEMORY USAGE of the stream) per 1,000 stored messages, Redis CPU each."""
    from fastapi_pubsub_cluster.backends.redis import RedisKeys

    channel = "fanout-stored"
    stream = RedisKeys(live.prefix).history(channel)
    await asyncio.sleep(0.2)
    memory_before = await asyncio.to_thread(live.redis.used_memory)
    redis_before = await asyncio.to_thread(RedisCpu.read, live)
    for sequence in range(messages):
        await live.publisher.publish(channel, make_payload(sequence))
    redis_cpu = (await asyncio.to_thread(RedisCpu.read, live)).minus(redis_before)
    await asyncio.sleep(0.2)
    memory_after = await asyncio.to_thread(live.redis.used_memory)
    stored = await asyncio.to_thread(live.redis.stream_length, stream)
    stream_bytes = await asyncio.to_thread(live.redis.key_memory, stream) if stored else None
    growth = memory_after - memory_before
    return {
        f"{prefix}messages": float(messages),
        f"{prefix}stream_entries": float(stored),
        f"{prefix}used_memory_kib_per_1000": growth / 1024 * 1000 / stored if stored else None,
        f"{prefix}used_memory_kib_per_1000_published": growth / 1024 * 1000 / messages,
        f"{prefix}stream_kib_per_1000": stream_bytes / 1024 * 1000 / stored
        if stream_bytes is not None and stored
        else None,
        **redis_cpu.per_broadcast(live, messages, prefix),
    }
