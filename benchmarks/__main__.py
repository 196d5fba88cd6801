"""``python -m benchmarks [--quick] [--only NAME ...] [--scenario fanout|channels|idle]``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.environment import library_revision, machine, package_versions
from benchmarks.limits import raise_open_files_limit
from benchmarks.plan import FULL, QUICK, Plan
from benchmarks.progress import ProgressDisplay
from benchmarks.redis_server import BenchRedis, bench_redis
from benchmarks.report import build_report, print_report, write_report
from benchmarks.scenarios import (
    Measurement,
    Values,
    measure_channels,
    measure_fanout,
    measure_idle,
)
from benchmarks.targets import by_name

NOTES = (
    "Server CPU = user+system seconds of the server process tree (psutil) from the first "
    "publish to the last receipt, divided by frames received; 'sys' includes the loopback "
    "TCP receive path the sender pays for.",
    "Latency = receipt time minus the send time in the payload, at a steady 2 and 10 msg/s.",
    "Clients: two processes, plain `websockets` client, no permessage-deflate offered "
    "(so no server compresses), engine.io spoken by hand for socket.io.",
    "Publishing: ours (Redis) via RedisPublisher, socket.io via a write-only "
    "AsyncRedisManager, broadcaster via Broadcast.publish; in-memory systems, ceilings and "
    "fastapi_websocket_pubsub (its users publish in-app) via a control websocket.",
    "Repeats are interleaved (every configuration once, then again) so drift hits all alike; "
    "±N% after a figure is half the max-min spread of the repeats when it exceeds 7%.",
)


@dataclass(frozen=True)
class Step:
    scenario: str
    target: str
    repeat: int
    run: Callable[[], Awaitable[Values]]


def build_steps(plan: Plan, redis: BenchRedis, only: set[str], scenarios: set[str]) -> list[Step]:
    def wanted(target: str, scenario: str) -> bool:
        return (not only or target in only) and (not scenarios or scenario in scenarios)

    steps: list[Step] = []
    for repeat in range(plan.repeats):
        for size in plan.fanout_sizes:
            steps += [
                Step(f"fanout-{size}", name, repeat, _fanout(plan, redis, name, size))
                for name in plan.fanout_targets
                if wanted(name, "fanout")
            ]
        if plan.large_fanout_size is not None:
            size = plan.large_fanout_size
            steps += [
                Step(f"fanout-{size}", name, repeat, _fanout(plan, redis, name, size))
                for name in plan.large_fanout_targets
                if wanted(name, "fanout")
            ]
        channels, per_channel = plan.channel_layout
        steps += [
            Step(
                f"channels-{channels}x{per_channel}",
                name,
                repeat,
                _channels(plan, redis, name),
            )
            for name in plan.channel_targets
            if wanted(name, "channels")
        ]
        if repeat < plan.idle_repeats:
            steps += [
                Step(f"idle-{size}", name, repeat, _idle(redis, name, size))
                for size in plan.idle_sizes
                for name in plan.idle_targets
                if wanted(name, "idle")
            ]
    return steps


def _fanout(plan: Plan, redis: BenchRedis, name: str, size: int) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_fanout(
        by_name(name),
        redis,
        size,
        burst_deliveries=plan.burst_deliveries,
        min_burst_messages=plan.min_burst_messages,
        steady_seconds=plan.steady_seconds,
        light_seconds=plan.light_seconds,
    )


def _channels(plan: Plan, redis: BenchRedis, name: str) -> Callable[[], Awaitable[Values]]:
    channels, per_channel = plan.channel_layout
    return lambda: measure_channels(
        by_name(name), redis, channels, per_channel, plan.channel_messages
    )


def _idle(redis: BenchRedis, name: str, size: int) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_idle(by_name(name), redis, size)


async def run(plan: Plan, only: set[str], scenarios: set[str], step_timeout: float) -> None:
    started = time.monotonic()
    with bench_redis() as redis:
        environment = {
            "packages": package_versions(),
            "machine": machine(),
            "redis_server": redis.version(),
            "redis_owned": redis.owned,
            "library_revision": library_revision(),
        }
        steps = build_steps(plan, redis, only, scenarios)
        measurements: list[Measurement] = []
        interrupted = asyncio.Event()
        current: asyncio.Task[Values] | None = None

        def interrupt() -> None:
            interrupted.set()
            if current is not None:
                current.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        with ProgressDisplay(len(steps)) as progress:
            for step in steps:
                if interrupted.is_set():
                    break
                progress.start(f"{step.scenario} {step.target} #{step.repeat + 1}")
                measurement = Measurement(step.scenario, step.target, step.repeat)
                current = asyncio.create_task(asyncio.wait_for(step.run(), step_timeout))
                try:
                    measurement.values = await current
                except asyncio.CancelledError:
                    if not interrupted.is_set():
                        raise
                    measurement.error = "interrupted"
                except Exception as exc:  # one broken system must not stop the run
                    measurement.error = f"{type(exc).__name__}: {exc}"
                    measurement.traceback = traceback.format_exc(limit=-6)
                measurements.append(measurement)
                progress.done(
                    f"  {step.scenario} {step.target}: {measurement.error}"
                    if measurement.error
                    else None
                )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    notes = list(NOTES)
    if not environment["redis_owned"]:
        notes.append("REDIS_URL given: Redis command counts include any other client's commands.")
    report = build_report(plan.name, measurements, environment, time.monotonic() - started, notes)
    path = write_report(report)
    print_report(report, path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized run (about a minute)")
    parser.add_argument("--only", action="append", default=[], help="run only this system")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        choices=("fanout", "channels", "idle"),
        help="run only this scenario",
    )
    parser.add_argument("--step-timeout", type=float, default=600.0)
    arguments = parser.parse_args()
    for name in arguments.only:
        by_name(name)  # fail early on a typo
    raise_open_files_limit()
    plan = QUICK if arguments.quick else FULL
    asyncio.run(run(plan, set(arguments.only), set(arguments.scenario), arguments.step_timeout))


if __name__ == "__main__":
    main()
