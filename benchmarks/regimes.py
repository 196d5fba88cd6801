"""Each regime's target: ours against its floor in the same run, met or not, with the
spread of the ratio over the repeats."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from benchmarks.metrics import median, ratio
from benchmarks.scenarios import Measurement

#: Each regime's figure for ours against its floor, same run: (regime, scenario prefix,
#: figure, ours, floor, goal as text). The floor may be several targets: the best one counts.
REGIMES: tuple[tuple[str, str, str, str, tuple[str, ...], str], ...] = (
    ("one channel, direct", "fanout-", "burst_cpu_us", "ours-redis-2w-direct", ("websockets",), ""),
    ("one channel, ASGI", "fanout-", "burst_cpu_us", "ours-memory", ("fastapi-loop",), "≤1.05"),
    (
        "one channel, ASGI via Redis",
        "fanout-",
        "burst_cpu_us",
        "ours-redis-1w",
        ("fastapi-loop",),
        "≤1.05",
    ),
    (
        "many channels, direct",
        "channels-",
        "burst_cpu_us",
        "ours-redis-2w-direct",
        ("websockets",),
        "≤2.0",
    ),
    ("many channels, ASGI", "channels-", "burst_cpu_us", "ours-redis-2w", ("websockets",), "≤2.4"),
    (
        "many channels, direct ÷ redis-py loop",
        "channels-",
        "burst_cpu_us",
        "ours-redis-2w-direct",
        ("redis-py-loop-2w",),
        "≤0.8",
    ),
    (
        "many channels, ASGI ÷ redis-py loop",
        "channels-",
        "burst_cpu_us",
        "ours-redis-2w",
        ("redis-py-loop-2w",),
        "",
    ),
    (
        "many channels steady, direct",
        "channels-",
        "steady_cpu_us",
        "ours-redis-2w-direct",
        ("websockets",),
        "≤2.0",
    ),
    (
        "many channels steady, ASGI",
        "channels-",
        "steady_cpu_us",
        "ours-redis-2w",
        ("websockets",),
        "≤2.4",
    ),
    (
        "many channels steady, direct ÷ redis-py loop",
        "channels-",
        "steady_cpu_us",
        "ours-redis-2w-direct",
        ("redis-py-loop-2w",),
        "≤0.8",
    ),
    (
        "deflate shared ÷ uncompressed direct",
        "deflate-",
        "burst_cpu_us",
        "ours-redis-2w-direct",
        ("ours-redis-2w-direct-off",),
        "≤1.3",
    ),
    (
        "deflate per-socket ÷ websockets deflate",
        "deflate-",
        "burst_cpu_us",
        "ours-redis-2w-direct-per-socket",
        ("websockets-deflate",),
        "≤1.0",
    ),
    (
        "deflate shared ÷ websockets deflate",
        "deflate-",
        "burst_cpu_us",
        "ours-redis-2w-direct",
        ("websockets-deflate",),
        "",
    ),
    (
        "publish/s ÷ best peer",
        "publish-",
        "publish_per_s",
        "ours",
        # Only peers that complete every call: a failing pool's rate is not a throughput.
        ("redis-py-blocking-pool", "redis-py-pool", "broadcaster"),
        "≥2",
    ),
)


def evaluate_regimes(
    summary: dict[str, dict[str, dict[str, Any]]], measurements: Sequence[Measurement]
) -> list[dict[str, Any]]:
    """One row per regime and scenario run: the ratio of the medians, the lowest and
    highest ratio of one repeat's figures (repeats are interleaved, so repeat i of ours
    ran beside repeat i of its floor), the goal and whether the median ratio meets it."""
    by_repeat: dict[tuple[str, str, int], dict[str, Any]] = defaultdict(dict)
    for m in measurements:
        if m.error is None:
            by_repeat[(m.scenario, m.target, m.repeat)] = m.values
    rows: list[dict[str, Any]] = []
    for label, prefix, key, ours, floors, goal in REGIMES:
        for scenario in sorted(summary):
            if not scenario.startswith(prefix):
                continue
            figures = summary[scenario]
            usable = [
                f
                for f in floors
                if figures.get(f, {}).get(key) is not None and not figures[f].get("publish_failed")
            ]
            mine = figures.get(ours, {}).get(key)
            if mine is None or not usable:
                continue
            # Higher is better for a rate, lower for a cost: compare with the best floor.
            pick = max if key.endswith("_per_s") else min
            best = pick(figures[f][key] for f in usable)
            repeats = sorted({r for (s, t, r) in by_repeat if s == scenario and t == ours})
            per_repeat = []
            for repeat in repeats:
                theirs = [by_repeat.get((scenario, f, repeat), {}).get(key) for f in usable]
                present = [v for v in theirs if v is not None]
                value = by_repeat[(scenario, ours, repeat)].get(key)
                if present and value is not None:
                    per_repeat.append(ratio(value, pick(present)))
            found = [r for r in per_repeat if r is not None]
            value_ratio = ratio(mine, best)
            rows.append(
                {
                    "regime": label,
                    "scenario": scenario,
                    "key": key,
                    "ours": ours,
                    "floor": usable,
                    "ratio": value_ratio,
                    "ratio_median_of_repeats": median(found),
                    "ratio_min": min(found, default=None),
                    "ratio_max": max(found, default=None),
                    "goal": goal,
                    "met": _met(value_ratio, goal),
                }
            )
    return rows


def _met(value: float | None, goal: str) -> bool | None:
    match = re.fullmatch(r"([≤≥])\s*([0-9.]+)", goal)
    if value is None or match is None:
        return None
    bound = float(match.group(2))
    return value <= bound if match.group(1) == "≤" else value >= bound
