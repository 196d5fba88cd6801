"""``python -m benchmarks [--quick] [--only NAME ...]
[--scenario fanout|channels|idle|cluster|history|deflate|publish|storm] [--storm-clients N]``."""

from __future__ import annotations

import importlib.util
import sys

# The [bench] extra, checked before anything imports it: one line, not a traceback.
# (broadcaster and fastapi_websocket_pubsub are not in it: each runs in a peer venv of its
# own, built on first use by benchmarks.peer_venvs.)
BENCH_MODULES = (
    "uvicorn",
    "websockets",
    "psutil",
    "rich",
    "socketio",
    "fastapi_pubsub_cluster",
)
_missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
if _missing:
    sys.exit(
        f"python -m benchmarks: missing {', '.join(_missing)}; "
        "install the [bench] extra: pip install -e '.[bench]'"
    )

import argparse
import asyncio
import contextlib
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.environment import library_revision, machine, package_versions
from benchmarks.installs import shared_files
from benchmarks.peer_venvs import describe
from benchmarks.plan import FULL, QUICK, Plan, clients_count
from benchmarks.progress import ProgressDisplay
from benchmarks.publish_rate import PEER_VENV_OF, measure_publish_rate
from benchmarks.redis_server import BenchRedis, bench_cluster, bench_redis
from benchmarks.report import build_report, print_report, write_report
from benchmarks.scenarios import (
    Measurement,
    Values,
    measure_channels,
    measure_cluster,
    measure_deflate,
    measure_fanout,
    measure_history,
    measure_idle,
)
from benchmarks.servers import KEEPALIVE_NOTE
from benchmarks.storm import REFUSALS, measure_storm
from benchmarks.storm_report import STORM_NOTES
from benchmarks.targets import by_name
from tools.processes import raise_open_files_limit

NOTES = (
    "Server CPU = seconds on CPU of the server process tree from the first publish to the "
    "last receipt, divided by frames received: the sum from each thread's schedstat "
    "(nanoseconds), split into user and sys by psutil's clock ticks (10 ms, which alone "
    "would be ±30% of a short burst); 'sys' includes the loopback TCP receive path the "
    "sender pays for.",
    "Latency = receipt time minus the send time in the payload, at a steady 2 and 10 msg/s.",
    "Clients: two processes, plain `websockets` client, no permessage-deflate offered "
    "(so no server compresses), engine.io spoken by hand for socket.io.",
    "Publishing: ours (Redis) via RedisPublisher, socket.io via a write-only "
    "AsyncRedisManager, broadcaster via the PUBLISH its Broadcast.publish sends (redis-py: "
    "broadcaster is only in its peer venv); in-memory systems, ceilings and "
    "fastapi_websocket_pubsub (its users publish in-app) via a control websocket.",
    "Repeats are interleaved (every configuration once, then again) so drift hits all alike; "
    "±N% after a figure is half the max-min spread of the repeats when it exceeds 7%.",
    KEEPALIVE_NOTE,
)
#: Distributions named in the peer venv notes.
PEER_PACKAGES = (
    "broadcaster",
    "fastapi-websocket-pubsub",
    "fastapi-websocket-rpc",
    "permit-broadcaster",
    "asyncio-redis",
    "redis",
)
SCENARIOS = ("fanout", "channels", "idle", "cluster", "history", "deflate", "publish", "storm")
CLUSTER_NOTES = (
    "cluster: the same channels workload with 2 uvicorn workers on one Redis and on a "
    "3-master Redis Cluster (SSUBSCRIBE/SPUBLISH, channels spread over the shards by hash "
    "slot). On two shared cores the websocket clients bound deliveries/s, so a cluster cannot "
    "raise it here: what shards change is Redis CPU per broadcast and how it is spread "
    "('max node' = the busiest node's share of Redis CPU; 1/3 = even over three shards).",
    "Redis CPU: psutil (user+system of the redis-server processes; 10 ms clock ticks, so "
    "coarse at these loads) and INFO cpu (each node's own getrusage, microseconds).",
)
HISTORY_NOTES = (
    "history: one channel, history off vs on (PUBSUB_HISTORY_CHANNELS on the server, the same "
    "history_channels in the publisher's settings: one Lua script, XADD MAXLEN ~ + PUBLISH, "
    "per message). 'stored' = 1,000 messages then published to a history channel with no "
    "subscribers: Redis used_memory growth and the stream's MEMORY USAGE per 1,000 entries "
    "(history_size 1000), and Redis CPU per message.",
)


@dataclass(frozen=True)
class Step:
    scenario: str
    target: str
    repeat: int
    run: Callable[[], Awaitable[Values]]


def wanted_scenario(plan: Plan, scenario: str, scenarios: set[str]) -> bool:
    if scenarios:
        return scenario in scenarios
    return scenario not in plan.explicit_only


def needs_cluster(plan: Plan, only: set[str], scenarios: set[str]) -> bool:
    return wanted_scenario(plan, "cluster", scenarios) and any(
        by_name(name).uses_cluster for name in plan.cluster_targets if not only or name in only
    )


def build_steps(
    plan: Plan,
    redis: BenchRedis,
    only: set[str],
    scenarios: set[str],
    cluster: BenchRedis | None = None,
) -> list[Step]:
    def wanted(target: str, scenario: str) -> bool:
        return (not only or target in only) and wanted_scenario(plan, scenario, scenarios)

    def redis_for(target: str) -> BenchRedis:
        if by_name(target).uses_cluster:
            if cluster is None:
                raise RuntimeError(f"{target} needs a Redis Cluster")
            return cluster
        return redis

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
        channels, per_channel = plan.cluster_layout
        steps += [
            Step(
                f"cluster-{channels}x{per_channel}",
                name,
                repeat,
                _cluster(plan, redis_for(name), name),
            )
            for name in plan.cluster_targets
            if wanted(name, "cluster")
        ]
        steps += [
            Step(
                f"history-{plan.history_subscribers}",
                name,
                repeat,
                _history(plan, redis_for(name), name),
            )
            for name in plan.history_targets
            if wanted(name, "history")
        ]
        for share in plan.deflate_shares:
            kind = "deflate" if share >= 1.0 else f"deflate{round(share * 100)}pct"
            steps += [
                Step(
                    f"{kind}-{plan.deflate_subscribers}-{payload}",
                    name,
                    repeat,
                    _deflate(plan, redis, name, payload, share),
                )
                for payload in plan.deflate_payloads
                for name in plan.deflate_targets
                if wanted(name, "deflate")
            ]
        steps += [
            Step(f"publish-{plan.publish_callers}", system, repeat, _publish(plan, redis, system))
            for system in plan.publish_systems
            if wanted_scenario(plan, "publish", scenarios) and (not only or system in only)
        ]
        steps += [
            Step(f"storm-{plan.storm_clients}", name, repeat, _storm(plan, redis, name))
            for name in plan.storm_targets
            if wanted(name, "storm")
        ]
        if repeat < plan.idle_repeats:
            steps += [
                Step(f"idle-{size}", name, repeat, _idle(redis, name, size))
                for size in plan.idle_sizes
                for name in plan.idle_targets
                if wanted(name, "idle")
            ]
    return steps


def peer_venvs_of(steps: list[Step]) -> list[str]:
    """The peer venvs the steps run on (their servers', or a publish system's)."""
    names: set[str] = set()
    for step in steps:
        if step.scenario.startswith("publish-"):
            venv = PEER_VENV_OF.get(step.target)
        else:
            venv = by_name(step.target).venv
        if venv is not None:
            names.add(venv)
    return sorted(names)


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
        by_name(name), redis, channels, per_channel, plan.channel_messages, plan.steady_seconds
    )


def _cluster(plan: Plan, redis: BenchRedis, name: str) -> Callable[[], Awaitable[Values]]:
    channels, per_channel = plan.cluster_layout
    return lambda: measure_cluster(
        by_name(name), redis, channels, per_channel, plan.cluster_messages
    )


def _history(plan: Plan, redis: BenchRedis, name: str) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_history(
        by_name(name),
        redis,
        plan.history_subscribers,
        burst_messages=plan.history_burst_messages,
        steady_seconds=plan.steady_seconds,
        light_seconds=plan.light_seconds,
        stored_messages=plan.history_stored_messages,
    )


def _deflate(
    plan: Plan, redis: BenchRedis, name: str, payload: str, share: float
) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_deflate(
        by_name(name),
        redis,
        plan.deflate_subscribers,
        payload=payload,
        deflate_share=share,
        deliveries=plan.deflate_deliveries,
    )


def _publish(plan: Plan, redis: BenchRedis, system: str) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_publish_rate(
        system, redis.url, plan.publish_callers, plan.publish_seconds
    )


def _storm(plan: Plan, redis: BenchRedis, name: str) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_storm(by_name(name), redis, plan.storm_clients)


def _idle(redis: BenchRedis, name: str, size: int) -> Callable[[], Awaitable[Values]]:
    return lambda: measure_idle(by_name(name), redis, size)


async def run(plan: Plan, only: set[str], scenarios: set[str], step_timeout: float) -> None:
    started = time.monotonic()
    with bench_redis() as redis, contextlib.ExitStack() as stack:
        cluster = (
            stack.enter_context(bench_cluster()) if needs_cluster(plan, only, scenarios) else None
        )
        steps = build_steps(plan, redis, only, scenarios, cluster)
        environment: dict[str, Any] = {
            "packages": package_versions(),
            "shared_files": shared_files(),
            # Built (first use) or checked before the first step: never inside a measurement.
            "peer_venvs": {name: describe(name) for name in peer_venvs_of(steps)},
            "machine": machine(),
            "redis_server": redis.version(),
            "redis_owned": redis.owned,
            "redis_cluster_nodes": len(cluster.node_urls) if cluster is not None else None,
            "redis_cluster_owned": cluster.owned if cluster is not None else None,
            "library_revision": library_revision(),
        }
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
    ran = {measurement.scenario.split("-", 1)[0] for measurement in measurements}
    notes += [
        *(CLUSTER_NOTES if "cluster" in ran else ()),
        *(HISTORY_NOTES if "history" in ran else ()),
        *((*STORM_NOTES, *REFUSALS) if "storm" in ran else ()),
    ]
    for name, venv in environment["peer_venvs"].items():
        packages = venv["packages"]
        peer = ", ".join(f"{k} {packages[k]}" for k in PEER_PACKAGES if k in packages)
        notes.append(
            f"Peer venv {name} ({venv['requirements']}; server stack pinned to the driver's): "
            f"{peer}; files owned by two distributions: {len(venv['shared_files'])}."
        )
    if environment["shared_files"]:
        notes.append(
            f"The driver's environment has {len(environment['shared_files'])} files owned by "
            "two distributions (see benchmarks/installs.py); no peer server runs in it."
        )
    if environment["redis_cluster_owned"] is False:
        notes.append("REDIS_CLUSTER_URL given: its nodes' CPU is not measured (only INFO cpu).")
    if not environment["redis_owned"]:
        notes.append("REDIS_URL given: Redis command counts include any other client's commands.")
    report = build_report(plan.name, measurements, environment, time.monotonic() - started, notes)
    path = write_report(report)
    print_report(report, path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="CI-sized run (175-209 s on two cores)"
    )
    parser.add_argument("--only", action="append", default=[], help="run only this system")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        choices=SCENARIOS,
        help="run only this scenario (cluster and history are not in a plain --quick run; "
        "storm runs only when named)",
    )
    parser.add_argument(
        "--storm-clients",
        type=clients_count,
        default=None,
        help="clients of the storm scenario (default: 10,000; 1,000 with --quick)",
    )
    parser.add_argument("--step-timeout", type=float, default=600.0)
    arguments = parser.parse_args()
    for name in arguments.only:
        if name not in FULL.publish_systems:
            by_name(name)  # fail early on a typo
    raise_open_files_limit()
    plan = QUICK if arguments.quick else FULL
    if arguments.storm_clients is not None:
        plan = replace(plan, storm_clients=arguments.storm_clients)
    asyncio.run(run(plan, set(arguments.only), set(arguments.scenario), arguments.step_timeout))


if __name__ == "__main__":
    main()
