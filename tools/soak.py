"""A longer soak of issue 13's fault matrix: the faults of ``tests/test_fault_matrix.py``
in random order, each on fresh workers and a fresh redis-server under the same workload,
each after ``--load`` seconds of it, until ``--minutes`` are spent; prints the same figures
per case and a summary, and exits non-zero if any invariant of SPEC §6 broke.

    python -m tools.soak --minutes 10 --load 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid

from tests.fault_cases import FAULTS, rig_on
from tests.fault_workload import BEAT, Figures, run_case
from tools.redis_servers import OwnedRedisServer


def broken(figures: Figures) -> bool:
    """Whether the case broke an invariant (the ones the matrix asserts)."""
    return bool(
        figures.problems
        or figures.duplicates
        or figures.losses_hist
        or figures.out_of_order
        or not figures.converged_s <= 2 * BEAT
    )


async def one_case(name: str, load: float) -> Figures:
    fault = next(f for f in FAULTS if f.name == name)
    server = OwnedRedisServer()
    server.start()
    try:
        prefix = f"soak-{uuid.uuid4().hex[:8]}"
        async with rig_on(server, prefix, proxied=name.startswith("proxy")) as rig:
            return await run_case(rig, fault, load=load)
    except Exception as exc:  # a fault step or the workload failed: a broken case
        return Figures(name, problems=[f"the case failed: {exc!r}"])
    finally:
        server.close()


async def soak(minutes: float, load: float, seed: int) -> list[Figures]:
    rng = random.Random(seed)
    deadline = time.monotonic() + minutes * 60
    results: list[Figures] = []
    while time.monotonic() < deadline:
        figures = await one_case(rng.choice(FAULTS).name, load)
        print(figures.line(), flush=True)
        for problem in figures.problems:
            print(f"    {problem}", flush=True)
        results.append(figures)
    return results


def summary(results: list[Figures]) -> str:
    lines = [
        f"{'fault':<28} {'cases':>5} {'broken':>6} {'dups':>5} {'hist lost':>9} {'max conv s':>10}"
    ]
    for name in sorted({f.name for f in results}):
        cases = [f for f in results if f.name == name]
        conv = max((f.converged_s for f in cases), default=float("nan"))
        lines.append(
            f"{name:<28} {len(cases):>5} {sum(map(broken, cases)):>6}"
            f" {sum(f.duplicates for f in cases):>5} {sum(f.losses_hist for f in cases):>9}"
            f" {conv:>10.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to soak")
    parser.add_argument("--load", type=float, default=20.0, help="seconds of load per case")
    parser.add_argument("--seed", type=int, default=13, help="seed of the fault order")
    args = parser.parse_args(argv)
    results = asyncio.run(soak(args.minutes, args.load, args.seed))
    print(summary(results))
    return 1 if any(map(broken, results)) else 0


if __name__ == "__main__":
    sys.exit(main())
