"""How big and how long: the quick (CI) plan and the full plan."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.targets import ALL_TARGETS

EVERYONE = tuple(target.name for target in ALL_TARGETS)
SINGLE_PROCESS = tuple(t.name for t in ALL_TARGETS if t.workers == 1)


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
    #: Scenarios this plan runs only when asked for by name (``--scenario``).
    explicit_only: tuple[str, ...] = ()


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
    channel_targets=("ours-memory", "ours-redis-1w", "websockets"),
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
    explicit_only=("cluster", "history"),
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
    channel_targets=SINGLE_PROCESS,
    channel_messages=2000,
    idle_sizes=(5000, 10_000),
    idle_targets=SINGLE_PROCESS,
    idle_repeats=1,
)
