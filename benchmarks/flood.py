"""``python -m benchmarks.flood``: does one flooding client slow down everyone else?

A uvicorn worker (in memory) serves a channel whose sockets relay what clients send. Twenty
well-behaved clients receive the pings of a pinger (20 per second); each ping carries its
send time, so each receipt gives a publish-to-receive latency. One phase is quiet; in the
others a client in a separate process, from its own address (127.0.0.2), sends small
messages into the channel as fast as it can (and reconnects at once whenever it is closed or
refused), with the inbound limits off and under each policy. Prints, per phase, the medians
of ``--repeat`` runs (3) of p50/p99 latency, the p99's spread, the worker's CPU and what the
flooder got through; phases are interleaved so that drift hits them alike. About 4 minutes.

``--profile`` instead runs each phase once under py-spy and prints the worker's CPU per
stage (parsing client frames, writing to sockets, handshakes...). ``--phase PREFIX``
(repeatable) runs only the phases whose names start with it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets
from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub

OBSERVERS = 20
PINGS_PER_SECOND = 20
PHASE_SECONDS = 6.0
CHANNEL = "flood"
#: The flooder's own address (all of 127/8 is loopback): limits are remembered per address.
FLOODER_HOST = "127.0.0.2"

PHASES: list[tuple[str, bool, dict[str, str]]] = [
    ("quiet", False, {}),
    (
        "flood, limits off",
        True,
        {"INBOUND_MESSAGES_PER_SECOND": "0", "INBOUND_BYTES_PER_SECOND": "0"},
    ),
    ("flood, 50/s, disconnect (default)", True, {}),
    ("flood, 50/s, disconnect, no cool-down", True, {"INBOUND_COOLDOWN": "0"}),
    ("flood, 50/s, drop", True, {"INBOUND_RATE_POLICY": "drop"}),
    ("flood, 50/s, throttle", True, {"INBOUND_RATE_POLICY": "throttle"}),
]


class Relay(BasePubSubWebSocket):
    async def on_message(self, data: Any) -> None:
        await self.publish(data)


def create_app() -> FastAPI:
    """The worker's app (``uvicorn benchmarks.flood:create_app --factory``)."""
    hub = PubSubHub()
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/ws/{channel}")
    async def relay(websocket: WebSocket, channel: str) -> None:
        await Relay(websocket, channel, hub=hub).run()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(port: int, settings: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **{f"PUBSUB_{k}": v for k, v in settings.items()}}
    env.pop("PUBSUB_REDIS_URL", None)
    command = [sys.executable, "-m", "uvicorn", "benchmarks.flood:create_app", "--factory"]
    command += ["--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the worker did not start")


def flood(url: str, stop_at: float, counts: Any = None) -> None:
    """A separate process: send small messages as fast as possible, read and discard the
    relays, reconnect at once whenever closed or refused. ``counts`` (a shared array) holds
    (messages sent, connections accepted, connections refused) as they happen."""
    counts = counts if counts is not None else [0, 0, 0]

    async def one_connection() -> None:
        async with websockets.connect(url, compression=None, local_addr=(FLOODER_HOST, 0)) as ws:
            counts[1] += 1

            async def drain() -> None:
                async for _ in ws:
                    pass

            reader = asyncio.create_task(drain())
            try:
                while time.time() < stop_at and not reader.done():
                    await ws.send('{"flood":1}')
                    counts[0] += 1
                    if counts[0] % 50 == 0:
                        await asyncio.sleep(0)
            finally:
                reader.cancel()
                # Refused during a cool-down: closed before it joined.
                if (ws.close_reason or "").startswith("sending too fast:"):
                    counts[2] += 1

    async def main() -> None:
        while time.time() < stop_at:
            with contextlib.suppress(OSError, websockets.WebSocketException):
                await one_connection()

    async def until_stop() -> None:
        # A throttled send waits on TCP for as long as the server does not read: stop anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(main(), max(0.0, stop_at - time.time()))

    asyncio.run(until_stop())


async def observe(url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    observers = [await websockets.connect(url, compression=None) for _ in range(OBSERVERS)]
    pinger = await websockets.connect(url, compression=None)

    async def listen(ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if isinstance(message, dict) and "t" in message:
                latencies.append(time.time() - message["t"])

    async def drain(ws: Any) -> None:
        async for _ in ws:
            pass

    tasks = [asyncio.create_task(listen(ws)) for ws in observers]
    tasks.append(asyncio.create_task(drain(pinger)))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await pinger.send(json.dumps({"t": time.time()}))
        await asyncio.sleep(1 / PINGS_PER_SECOND)
    await asyncio.sleep(1.0)  # late pings still count
    for task in tasks:
        task.cancel()
    for ws in [*observers, pinger]:
        await ws.close()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def run_phase(
    name: str, flooding: bool, settings: dict[str, str], profile_to: str | None = None
) -> dict[str, Any]:
    port = free_port()
    worker = start_worker(port, settings)
    url = f"ws://127.0.0.1:{port}/ws/{CHANNEL}"
    flooder = None
    counts: Any = multiprocessing.Array("q", 3, lock=False)
    spy = start_profiler(worker.pid, profile_to) if profile_to else None
    try:
        cpu = psutil.Process(worker.pid)
        before = cpu.cpu_times()
        if flooding:
            flooder = multiprocessing.Process(
                target=flood, args=(url, time.time() + PHASE_SECONDS + 1, counts)
            )
            flooder.start()
        latencies = asyncio.run(observe(url, PHASE_SECONDS))
        after = cpu.cpu_times()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output
            spy.wait(30)
        if flooder is not None:
            flooder.join(10)
            if flooder.is_alive():
                flooder.kill()
        worker.terminate()
        worker.wait(10)
    sent, accepted, refused = counts[:]
    expected = OBSERVERS * int(PHASE_SECONDS * PINGS_PER_SECOND)
    return {
        "phase": name,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "received": len(latencies) / expected,
        "worker_cpu_s": (after.user + after.system) - (before.user + before.system),
        "flood_sent": sent,
        "flood_connections": accepted - refused,
        "flood_refused": refused,
    }


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    command = [spy, "record", "--format", "raw", "--rate", "250", "--nonblocking"]
    process = subprocess.Popen(
        [*command, "--output", output, "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    return process


#: (substring of a frame, stage): the first rule that matches a frame, scanning each
#: sampled stack from the innermost frame outwards, names its stage.
STAGES: list[tuple[str, str]] = [
    ("regeneration.py", "join/leave regeneration"),
    ("WebSocketsSansIOProtocol.send ", "writing frames to sockets"),
    ("Frame.serialize", "writing frames to sockets"),
    ("core/client.py", "writing frames to sockets"),
    ("core/outbox.py", "writing frames to sockets"),
    ("core/fanout.py", "fan-out (publish, deliver)"),
    ("backends/memory.py", "fan-out (publish, deliver)"),
    ("fastapi_pubsub_cluster/envelope.py", "encoding, decoding"),
    ("fastapi_pubsub_cluster/frames.py", "encoding, decoding"),
    ("handle_connect", "handshakes, refusals"),
    ("connection_made", "handshakes, refusals"),
    ("_refused_while_cooling_down", "handshakes, refusals"),
    ("BasePubSubWebSocket.run ", "handshakes, refusals"),
    ("Frame.parse", "parsing client frames"),
    ("Protocol.parse", "parsing client frames"),
    ("StreamReader", "parsing client frames"),
    ("handle_events", "parsing client frames"),
    ("handle_text", "parsing client frames"),
    ("send_receive_event_to_app", "parsing client frames"),
    ("data_received", "parsing client frames"),
    ("limits.py", "read loop, limiter"),
    ("_read_", "read loop, limiter"),
    ("WebSocket.receive", "read loop, limiter"),
    ("WebSocketsSansIOProtocol.receive", "read loop, limiter"),
]


def stages(collapsed: str) -> tuple[collections.Counter[str], int]:
    """Samples per stage in py-spy's collapsed stacks, and the samples in all."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        total += int(count_text)
        stage = "other (event loop, ASGI layers)"
        for frame in reversed(stack.split(";")):
            match = next((name for key, name in STAGES if key in frame), None)
            if match is not None:
                stage = match
                break
        counts[stage] += int(count_text)
    return counts, total


def print_profile(name: str, output: str, cpu_seconds: float) -> None:
    counts, total = stages(Path(output).read_text("utf-8"))
    Path(output).unlink()
    print(f"\n{name}: worker CPU {cpu_seconds:.2f} s, {total} samples")
    for stage, count in counts.most_common():
        share = count / max(1, total)
        print(f"  {100 * share:5.1f}%  {cpu_seconds * share:5.2f} s  {stage}")


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flood")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every phase (median)")
    parser.add_argument("--phase", action="append", help="only phases starting with this")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the worker: its CPU per stage, per phase"
    )
    arguments = parser.parse_args()
    phases = [p for p in PHASES if not arguments.phase or p[0].startswith(tuple(arguments.phase))]
    if arguments.profile:
        for name, flooding, settings in phases:
            with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as output:
                pass
            result = run_phase(name, flooding, settings, output.name)
            print_profile(name, output.name, result["worker_cpu_s"])
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in phases}
    for _ in range(arguments.repeat):  # interleaved: drift hits every phase alike
        for name, flooding, settings in phases:
            runs[name].append(run_phase(name, flooding, settings))
    quiet = statistics.median(r["p99_ms"] for r in runs.get("quiet", [])) if "quiet" in runs else 0
    print(f"medians of {arguments.repeat} runs (spread: min-max); quiet p99 {quiet:.1f} ms")
    print(
        f"{'phase':38} {'p50 ms':>6} {'p99 ms':>8} {'p99 spread':>13} {'p99/quiet':>9} "
        f"{'received':>8} {'CPU s':>6} {'flood sent':>10} {'accepted':>8} {'refused':>8}"
    )
    for name, results in runs.items():
        p99 = [r["p99_ms"] for r in results]
        median = {
            key: statistics.median(r[key] for r in results) for key in results[0] if key != "phase"
        }
        ratio = f"{median['p99_ms'] / quiet:9.2f}" if quiet else f"{'':9}"
        print(
            f"{name:38} {median['p50_ms']:6.1f} {median['p99_ms']:8.1f} {spread(p99):>13} {ratio} "
            f"{100 * median['received']:7.0f}% {median['worker_cpu_s']:6.2f} "
            f"{median['flood_sent']:10.0f} {median['flood_connections']:8.0f} "
            f"{median['flood_refused']:8.0f}"
        )


if __name__ == "__main__":
    main()
