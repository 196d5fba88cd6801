"""How big and how long: the quick (CI) plan and the full plan."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from benchmarks.targets import ALL_TARGETS

EVERYONE = tuple(target.name for target in ALL_TARGETS)
SINGLE_PROCESS = tuple(t.name for t in ALL_TARGETS if t.workers == 1)
#: The many-channels regime with 2 workers: ours (ASGI, direct) and the hand-written floor.
MANY_CHANNELS_2W = ("ours-redis-2w", "ours-redis-2w-direct", "redis-py-loop-2w")
#: The storm: ours (ASGI and --ws, without and with the original count hook), the
#: single-process ceilings, and the Redis-backed peers with 2 workers as ours.
STORM_SYSTEMS = (
    "ours-redis-2w",
    "ours-redis-2w-direct",
    "ours-redis-2w-count",
    "ours-redis-2w-direct-count",
    "websockets",
    "fastapi-loop",
    "socketio-redis-2w",
    "broadcaster-redis-2w",
    "permit-pubsub-redis-2w",
)


@dataclass(frozen=True)
class Plan:
    name: str
    repeats: int
    #: Scenario (a): one channel, N subscribers, for these targets.
    fanout_sizes: tuple[int, ...]
    fanout_targets: tuple[str, ...]
    #: Scenario (a) at a size only some targets run (None: skipped).
    large_fanout_size: int | None
    large_fanout_targets: tuple[str, ...]
    #: Deliveries aimed at per burst; messages = max(min_burst_messages, this // N).
    burst_deliveries: int
    min_burst_messages: int
    steady_seconds: float
    light_seconds: float
    #: Scenario (b): (channels, subscribers per channel) and the targets that run it.
    channel_layout: tuple[int, int]
    channel_targets: tuple[str, ...]
    channel_messages: int
    #: Scenario (c): idle connections for memory, and the targets that run it.
    idle_sizes: tuple[int, ...]
    idle_targets: tuple[str, ...]
    idle_repeats: int
    #: Scenario (d) ``cluster``: the channels workload on one Redis and on a 3-master Redis
    #: Cluster, same worker count: (channels, subscribers per channel), targets, messages.
    cluster_layout: tuple[int, int] = (200, 5)
    cluster_targets: tuple[str, ...] = ("ours-redis-2w", "ours-cluster-2w")
    cluster_messages: int = 5000
    #: Scenario (e) ``history``: one channel of N subscribers, history off vs on; messages
    #: in the burst; messages published afterwards to measure Redis memory per stored one.
    history_subscribers: int = 1000
    history_targets: tuple[str, ...] = ("ours-redis-1w", "ours-redis-history-1w")
    history_burst_messages: int = 100
    history_stored_messages: int = 1000
    #: Scenario (f) ``deflate``: clients offering permessage-deflate, one channel of N:
    #: targets, payloads (``scenarios.PAYLOADS``), shares of compressing clients
    #: (1.0: all; 0.5: beside as many uncompressed ones), deliveries per burst.
    deflate_subscribers: int = 1000
    deflate_targets: tuple[str, ...] = (
        "ours-redis-2w-direct",
        "ours-redis-2w-direct-per-socket",
        "ours-redis-2w-direct-off",
        "ours-redis-2w",
        "websockets",
        "websockets-deflate",
    )
    deflate_payloads: tuple[str, ...] = ("100B", "10KB")
    deflate_shares: tuple[float, ...] = (1.0, 0.5)
    deflate_deliveries: int = 30_000
    #: Scenario (g) ``publish``: one worker, N concurrent callers publishing for a while.
    publish_callers: int = 200
    publish_seconds: float = 3.0
    publish_systems: tuple[str, ...] = (
        "ours",
        "redis-py-pool",
        "redis-py-blocking-pool",
        "broadcaster",
    )
    #: Scenario (h) ``storm``: this many clients connect at once, then are aborted and
    #: reconnect at once, twice (``benchmarks.storm``); ``--storm-clients`` overrides it.
    storm_clients: int = 10_000
    storm_targets: tuple[str, ...] = STORM_SYSTEMS
    #: Scenarios this plan runs only when asked for by name (``--scenario``).
    explicit_only: tuple[str, ...] = ("storm",)


QUICK = Plan(
    name="quick",
    repeats=1,
    fanout_sizes=(500,),
    fanout_targets=EVERYONE,
    large_fanout_size=None,
    large_fanout_targets=(),
    burst_deliveries=10_000,
    min_burst_messages=5,
    steady_seconds=1.0,
    light_seconds=1.5,
    channel_layout=(50, 5),
    channel_targets=("ours-memory", "ours-redis-1w", "websockets", *MANY_CHANNELS_2W),
    channel_messages=300,
    idle_sizes=(),
    idle_targets=(),
    idle_repeats=1,
    # Not in a plain --quick run (it would pass 90 s); `--quick --scenario cluster` or
    # `--quick --scenario history` runs them at these sizes.
    cluster_layout=(50, 5),
    cluster_messages=1500,
    history_subscribers=500,
    history_burst_messages=40,
    history_stored_messages=1000,
    deflate_subscribers=500,
    deflate_shares=(1.0,),
    deflate_deliveries=10_000,
    publish_seconds=1.5,
    storm_clients=1000,
    explicit_only=("cluster", "history", "storm"),
)

FULL = Plan(
    name="full",
    repeats=3,
    fanout_sizes=(100, 1000),
    fanout_targets=EVERYONE,
    large_fanout_size=5000,
    large_fanout_targets=("ours-redis-1w", "websockets"),
    burst_deliveries=30_000,
    min_burst_messages=10,
    steady_seconds=2.0,
    light_seconds=3.0,
    channel_layout=(200, 5),
    channel_targets=(*SINGLE_PROCESS, *MANY_CHANNELS_2W),
    channel_messages=2000,
    idle_sizes=(5000, 10_000),
    idle_targets=SINGLE_PROCESS,
    idle_repeats=1,
)


def clients_count(text: str) -> int:
    """A positive number of clients (``10000`` or ``10_000``), for ``--storm-clients``."""
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 client, not {text}")
    return count
