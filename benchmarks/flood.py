"""``python -m benchmarks.flood``: does one flooding client slow down everyone else?

A uvicorn worker (in memory) serves a channel whose sockets relay what clients send. Twenty
well-behaved clients receive the pings of a pinger (20 per second); each ping carries its
send time, so each receipt gives a publish-to-receive latency. One phase is quiet; in the
others a client in a separate process sends small messages into the channel as fast as it
can (and reconnects whenever it is closed), with the inbound limits off, at their defaults
(disconnect) and with the ``drop`` policy. Prints p50/p99 latency and the worker's CPU per
phase. About 90 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
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

PHASES: list[tuple[str, bool, dict[str, str]]] = [
    ("quiet", False, {}),
    (
        "flood, limits off",
        True,
        {"INBOUND_MESSAGES_PER_SECOND": "0", "INBOUND_BYTES_PER_SECOND": "0"},
    ),
    ("flood, defaults (50/s, disconnect)", True, {}),
    ("flood, 50/s, drop", True, {"INBOUND_RATE_POLICY": "drop"}),
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


def flood(url: str, stop_at: float) -> None:
    """A separate process: send small messages as fast as possible, read and discard the
    relays, reconnect whenever closed."""

    async def one_connection() -> int:
        sent = 0
        async with websockets.connect(url, compression=None) as ws:

            async def drain() -> None:
                async for _ in ws:
                    pass

            reader = asyncio.create_task(drain())
            try:
                while time.time() < stop_at and not reader.done():
                    await ws.send('{"flood":1}')
                    sent += 1
                    if sent % 50 == 0:
                        await asyncio.sleep(0)
            finally:
                reader.cancel()
        return sent

    async def main() -> None:
        while time.time() < stop_at:
            with contextlib.suppress(OSError, websockets.WebSocketException):
                await one_connection()

    asyncio.run(main())


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


def run_phase(name: str, flooding: bool, settings: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    worker = start_worker(port, settings)
    url = f"ws://127.0.0.1:{port}/ws/{CHANNEL}"
    flooder = None
    try:
        cpu = psutil.Process(worker.pid)
        before = cpu.cpu_times()
        if flooding:
            flooder = multiprocessing.Process(
                target=flood, args=(url, time.time() + PHASE_SECONDS + 1)
            )
            flooder.start()
        latencies = asyncio.run(observe(url, PHASE_SECONDS))
        after = cpu.cpu_times()
    finally:
        if flooder is not None:
            flooder.join(10)
            if flooder.is_alive():
                flooder.kill()
        worker.terminate()
        worker.wait(10)
    expected = OBSERVERS * int(PHASE_SECONDS * PINGS_PER_SECOND)
    return {
        "phase": name,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "received": f"{len(latencies)}/{expected}",
        "worker_cpu_s": (after.user + after.system) - (before.user + before.system),
    }


def main() -> None:
    results = [run_phase(name, flooding, settings) for name, flooding, settings in PHASES]
    quiet = results[0]["p99_ms"]
    print(
        f"{'phase':38} {'p50 ms':>8} {'p99 ms':>8} {'p99/quiet':>9} {'received':>10} {'CPU s':>6}"
    )
    for r in results:
        print(
            f"{r['phase']:38} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['p99_ms'] / quiet:9.2f} "
            f"{r['received']:>10} {r['worker_cpu_s']:6.2f}"
        )


if __name__ == "__main__":
    main()
