"""Where a server's CPU goes: ``python -m benchmarks.profile [--target NAME] [--rate N]``.

Runs fan-out traffic (a burst, or ``--rate`` messages per second) against a real server
process while ``py-spy`` samples it (install ``py-spy``), then prints the functions with the
most samples: on-CPU time of their own ("self") and including callees ("total").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.publishers import make_payload
from benchmarks.redis_server import bench_redis
from benchmarks.scenarios import session, wait_for_deliveries
from benchmarks.targets import by_name
from tools.processes import raise_open_files_limit


def top_functions(
    collapsed: str, limit: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(self, total, samples) from py-spy's collapsed stacks (``frame;frame;... count``)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (file.py:line)" -> "function (file.py)": one row per function.
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";") if frame]
        if not frames or frames[0].startswith("process"):
            frames = frames[1:]
        samples += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return own.most_common(limit), total.most_common(limit), samples


async def profile(
    target_name: str,
    subscribers: int,
    messages: int,
    limit: int,
    native: bool,
    channels: int = 1,
    deflate: bool = False,
    rate: float = 0.0,
) -> None:
    """Sample every worker of ``target_name`` (py-spy, one recorder per process) while
    ``messages`` are published round-robin over ``channels`` channels of ``subscribers`` in
    all (clients offering permessage-deflate if ``deflate``): back to back, or ``rate`` per
    second if given (steady traffic, where each message wakes the workers on its own)."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    target = by_name(target_name)
    per_channel = max(1, subscribers // channels)
    layout = {f"room-{i}": per_channel for i in range(channels)}
    with bench_redis() as redis:
        async with session(target, redis, layout, 1.0 if deflate else 0.0) as live:
            processes = live.server.processes()
            # Workers only (uvicorn's supervisor idles); a single-process server is the root.
            pids = [p.pid for p in processes[1:]] or [processes[0].pid]
            outputs = []
            recorders = []
            for pid in pids:
                output = tempfile.NamedTemporaryFile(suffix=".txt", delete=False)  # noqa: SIM115
                output.close()
                outputs.append(output.name)
                recorders.append(
                    await asyncio.create_subprocess_exec(
                        *(spy, "record", "--format", "raw", "--rate", "500"),
                        *("--output", output.name, "--pid", str(pid)),
                        # py-spy cannot unwind C frames of a process it does not pause.
                        *(("--native",) if native else ("--nonblocking",)),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            try:
                await asyncio.sleep(1.0)  # py-spy attaches
                names = list(layout)
                start = time.monotonic()
                for sequence in range(messages):
                    if rate > 0 and (delay := start + sequence / rate - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                    await live.publisher.publish(
                        names[sequence % len(names)], make_payload(sequence)
                    )
                expected = sum(layout[names[i % len(names)]] for i in range(messages))
                await wait_for_deliveries(live, expected)
            finally:
                for recorder in recorders:
                    if recorder.returncode is None:
                        recorder.send_signal(signal.SIGINT)  # py-spy writes its output
                for recorder in recorders:
                    try:
                        await asyncio.wait_for(recorder.wait(), 30)
                    except TimeoutError:
                        recorder.kill()
                        await recorder.wait()
            collapsed = ""
            for name in outputs:
                collapsed += await asyncio.to_thread(Path(name).read_text, "utf-8")
                await asyncio.to_thread(Path(name).unlink)
    own, total, samples = top_functions(collapsed, limit)
    pace = f"{rate:g} msg/s" if rate > 0 else "a burst"
    print(
        f"{target_name}: {samples} samples of pids {pids} during {messages} messages "
        f"({pace}) over {channels} channel(s), {subscribers} subscribers in all"
    )
    for title, rows in (("self", own), ("total (with callees)", total)):
        print(f"\nTop functions by {title}:")
        for frame, count in rows:
            print(f"  {100 * count / max(1, samples):5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--target", default="ours-redis-1w")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=150)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="include C frames (uvloop)")
    parser.add_argument("--channels", type=int, default=1, help="round-robin over this many")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    parser.add_argument("--rate", type=float, default=0.0, help="msg/s (default: a burst)")
    arguments = parser.parse_args()
    raise_open_files_limit()
    asyncio.run(
        profile(
            arguments.target,
            arguments.subscribers,
            arguments.messages,
            arguments.top,
            arguments.native,
            arguments.channels,
            arguments.deflate,
            arguments.rate,
        )
    )


if __name__ == "__main__":
    main()
