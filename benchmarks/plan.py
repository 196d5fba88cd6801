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
