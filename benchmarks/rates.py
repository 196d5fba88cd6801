"""Many small channels at rising steady rates: where does waking workers once per message stop
mattering? ``python -m benchmarks.rates [--rates 200,1000,3000] [--seconds S] [--repeats R]``.

200 channels x 5 subscribers (split across the workers), messages round-robin over the
channels at each rate in turn. At a light rate every message wakes each worker on its own,
so a 2-worker system pays two wake-ups per message where the one-process ceiling pays one;
as the rate rises, a wake-up finds several messages pending and their cost is shared.
Printed: server CPU per delivery (user + system, every process) for ours (``--ws``), the
hand-written 2-worker redis-py loop and the ``websockets`` ceiling, the rate each run
reached, and the ratios, median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks.redis_server import BenchRedis, bench_redis
from benchmarks.report import show_results
from benchmarks.scenarios import session, steady, wait_until_quiet
from benchmarks.targets import OURS_DIRECT, REDIS_PY_LOOP, WEBSOCKETS, Target
from tools.processes import raise_open_files_limit

TARGETS = (OURS_DIRECT, REDIS_PY_LOOP, WEBSOCKETS)
CHANNELS = 200
PER_CHANNEL = 5


async def measure(
    target: Target, redis: BenchRedis, rates: list[float], seconds: float
) -> dict[float, tuple[float, float, float]]:
    """(CPU µs per delivery, rate reached, messages lost) at each rate, one server."""
    layout = {f"room-{index}": PER_CHANNEL for index in range(CHANNELS)}
    figures: dict[float, tuple[float, float, float]] = {}
    async with session(target, redis, layout) as live:
        for rate in rates:
            await wait_until_quiet(live)
            started = time.monotonic()
            values = await steady(live, rate, seconds, "")
            reached = round(rate * seconds) / max(1e-6, time.monotonic() - started)
            cpu = values["cpu_us"]
            figures[rate] = (float("nan") if cpu is None else cpu, reached, values["lost"] or 0.0)
    return figures


async def run(rates: list[float], seconds: float, repeats: int) -> dict[str, Any]:
    runs: dict[str, dict[float, list[tuple[float, float, float]]]] = {
        target.name: {rate: [] for rate in rates} for target in TARGETS
    }
    with bench_redis() as redis:
        for repeat in range(repeats):  # interleaved, so drift hits every system alike
            for target in TARGETS:
                for rate, figure in (await measure(target, redis, rates, seconds)).items():
                    runs[target.name][rate].append(figure)
                    print(
                        f"#{repeat + 1} {target.name:22} {rate:6.0f} msg/s: "
                        f"{figure[0]:6.1f} us/delivery (reached {figure[1]:6.0f} msg/s, "
                        f"{figure[2]:.0f} lost)",
                        flush=True,
                    )
    return summarise(runs, rates)


def summarise(
    runs: dict[str, dict[float, list[tuple[float, float, float]]]], rates: list[float]
) -> dict[str, Any]:
    """Medians per system and rate, and ours ÷ the loop and ÷ the ceiling."""
    ours, loop, ceiling = (target.name for target in TARGETS)
    summary: dict[str, Any] = {"systems": {}, "ratios": {}}
    for name, by_rate in runs.items():
        summary["systems"][name] = {
            f"{rate:g}": {
                "cpu_us_per_delivery_median": statistics.median(f[0] for f in figures),
                "cpu_us_per_delivery_min": min(f[0] for f in figures),
                "cpu_us_per_delivery_max": max(f[0] for f in figures),
                "rate_reached_median": statistics.median(f[1] for f in figures),
                "lost": sum(f[2] for f in figures),
            }
            for rate, figures in by_rate.items()
        }
    for rate in rates:
        medians = {
            name: summary["systems"][name][f"{rate:g}"]["cpu_us_per_delivery_median"]
            for name in (ours, loop, ceiling)
        }
        summary["ratios"][f"{rate:g}"] = {
            f"{ours} / {loop}": medians[ours] / medians[loop],
            f"{ours} / {ceiling}": medians[ours] / medians[ceiling],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,1000,3000", help="msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="per rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args()
    rates = [float(rate) for rate in arguments.rates.split(",")]
    raise_open_files_limit()
    results = asyncio.run(run(rates, arguments.seconds, arguments.repeats))
    show_results(results, arguments.json)


if __name__ == "__main__":
    main()
