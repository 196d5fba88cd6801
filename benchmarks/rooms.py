"""Many channels per socket: does a socket in ten channels cost more per delivery than ten
sockets in one each? ``python -m benchmarks.rooms [--sockets N] [--repeats R]``.

Both layouts hold the same memberships and receive the same messages (round-robin over ten
channels, each message reaching ``N`` sockets):

- ``one-socket-ten-channels``: ``N`` sockets, each in channels c0..c9 (its own, then nine
  joined at runtime with ``self.join``), so their frames there are tagged;
- ``ten-sockets-one-channel``: ``10 x N`` sockets, ``N`` in each channel.

The figure is server CPU per delivery (user + system, every worker), as in the main suite,
for the in-memory backend and Redis with one worker; the ratio of the two layouts is what
counts. Also printed: server memory per idle connection (a plain socket in one channel).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

from benchmarks.client_pool import ClientPool
from benchmarks.publishers import make_payload, publisher_for
from benchmarks.redis_server import BenchRedis, bench_redis
from benchmarks.report import show_results
from benchmarks.scenarios import (
    SETTLE_SECONDS,
    Session,
    wait_for_deliveries,
    wait_until_quiet,
)
from benchmarks.servers import running_server
from benchmarks.targets import OURS_MEMORY, OURS_REDIS, Target

CHANNELS = [f"c{index}" for index in range(10)]
LAYOUTS = ("one-socket-ten-channels", "ten-sockets-one-channel")
WARMUP_ROUNDS = 30


@dataclass
class Figures:
    cpu_us_per_delivery: float
    deliveries: int
    lost: int
    idle_kib_per_socket: float


def _urls(port: int, layout: str, sockets: int) -> list[tuple[str, str, bool]]:
    base = f"ws://127.0.0.1:{port}"
    if layout == "one-socket-ten-channels":
        also = ",".join(CHANNELS[1:])
        return [(f"{base}/rooms/{CHANNELS[0]}?also={also}", CHANNELS[0], False)] * sockets
    return [
        (f"{base}/ws/{channel}", channel, False) for channel in CHANNELS for _ in range(sockets)
    ]


async def _warm_up(pool: ClientPool, publisher: Any, per_message: int) -> None:
    """Publish a round to every channel until a round reaches every membership."""
    for _ in range(WARMUP_ROUNDS):
        await pool.collect(reset=True)
        for channel in CHANNELS:
            await publisher.publish(channel, make_payload(-1))
        counts = await wait_for_deliveries_quietly(pool, per_message * len(CHANNELS))
        if counts >= per_message * len(CHANNELS):
            return
    raise RuntimeError("the channels never all reached every socket")


async def wait_for_deliveries_quietly(pool: ClientPool, expected: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = (await pool.counts()).received
        if received >= expected:
            return received
        await asyncio.sleep(0.05)
    return (await pool.counts()).received


async def measure(
    target: Target, redis: BenchRedis, layout: str, sockets: int, messages: int
) -> Figures:
    prefix = f"bench-rooms-{uuid.uuid4().hex[:8]}"
    env = {"PUBSUB_KEY_PREFIX": prefix, "PUBSUB_MAX_CHANNELS_PER_SOCKET": "16"}
    if target.uses_redis:
        env["PUBSUB_REDIS_URL"] = redis.url
    try:
        with running_server(target, env) as server:
            baseline_rss = server.rss_bytes()
            pool = ClientPool(target.protocol)
            publisher = publisher_for(target, server.port, redis.url, prefix)
            await publisher.start()
            try:
                urls = _urls(server.port, layout, sockets)
                await pool.connect(urls)
                await _warm_up(pool, publisher, sockets)
                await asyncio.sleep(SETTLE_SECONDS)
                idle_kib = (server.rss_bytes() - baseline_rss) / 1024 / len(urls)
                live = Session(target, server, pool, publisher, redis, {}, prefix=prefix)
                await wait_until_quiet(live)
                await pool.collect(reset=True)
                cpu_before = server.cpu_snapshot()
                for sequence in range(messages):
                    channel = CHANNELS[sequence % len(CHANNELS)]
                    await publisher.publish(channel, make_payload(sequence))
                expected = messages * sockets
                await wait_for_deliveries(live, expected)
                cpu = server.cpu_delta(cpu_before, server.cpu_snapshot())
                received = (await pool.collect(reset=True)).received
                return Figures(
                    cpu_us_per_delivery=cpu.total * 1e6 / max(1, received),
                    deliveries=received,
                    lost=expected - received,
                    idle_kib_per_socket=idle_kib,
                )
            finally:
                await publisher.close()
                pool.close()
    finally:
        await asyncio.to_thread(redis.delete_prefix, prefix)


async def run(sockets: int, messages: int, repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with bench_redis() as redis:
        for target in (OURS_MEMORY, OURS_REDIS[0]):
            runs: dict[str, list[Figures]] = {layout: [] for layout in LAYOUTS}
            for repeat in range(repeats):  # interleaved, so drift hits both layouts alike
                for layout in LAYOUTS:
                    figures = await measure(target, redis, layout, sockets, messages)
                    runs[layout].append(figures)
                    print(
                        f"{target.name:15} {layout:24} #{repeat + 1}: "
                        f"{figures.cpu_us_per_delivery:6.2f} us/delivery, "
                        f"{figures.deliveries} delivered, {figures.lost} lost",
                        flush=True,
                    )
            results[target.name] = _summary(runs)
    return results


def _summary(runs: dict[str, list[Figures]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for layout, figures in runs.items():
        cpu = [f.cpu_us_per_delivery for f in figures]
        summary[layout] = {
            "cpu_us_per_delivery_median": statistics.median(cpu),
            "cpu_us_per_delivery_min": min(cpu),
            "cpu_us_per_delivery_max": max(cpu),
            "lost": sum(f.lost for f in figures),
            "idle_kib_per_socket_median": statistics.median(f.idle_kib_per_socket for f in figures),
        }
    many, single = (summary[layout]["cpu_us_per_delivery_median"] for layout in LAYOUTS)
    summary["ratio"] = many / single
    summary["target"] = "one socket in ten channels <= ten sockets in one (ratio <= 1.0)"
    summary["target_met"] = many <= single
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=300, help="deliveries per message")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args()
    results = asyncio.run(run(arguments.sockets, arguments.messages, arguments.repeats))
    show_results(results, arguments.json)


if __name__ == "__main__":
    main()
