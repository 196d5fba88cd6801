"""Publish throughput of one worker: N concurrent callers publishing for a while.

Run in its own process by the suite (``--scenario publish``), or by hand::

    python -m benchmarks.publish_rate --system ours --redis-url redis://... --callers 200

Systems: ``ours`` (``hub.publish`` of a started Redis hub, as a route would call it),
``redis-py-pool`` (a bare ``redis.asyncio`` client and its default pool, ``PUBLISH``),
``redis-py-blocking-pool`` (the same with a blocking pool of 200 connections),
``broadcaster`` (``Broadcast.publish``; the suite runs it on the broadcaster peer venv's
python, see ``benchmarks.peer_venvs``). Prints one JSON line: publications per second,
failed calls (and the first error), CPU seconds of this process per publication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Systems measured on a peer venv's python (``benchmarks.peer_venvs``), not the driver's.
PEER_VENV_OF = {"broadcaster": "broadcaster"}
Publish = Callable[[str, dict[str, Any]], Awaitable[Any]]


@asynccontextmanager
async def publisher(system: str, redis_url: str, prefix: str) -> AsyncIterator[Publish]:
    if system == "ours":
        from fastapi_pubsub_cluster import PubSubHub, PubSubSettings

        hub = PubSubHub(settings=PubSubSettings(redis_url=redis_url, key_prefix=prefix))
        async with hub:
            yield hub.publish
    elif system in ("redis-py-pool", "redis-py-blocking-pool"):
        import redis.asyncio as aioredis

        if system == "redis-py-pool":
            client = aioredis.Redis.from_url(redis_url)  # its default pool, as users do
        else:
            # A pool as large as the callers, waiting for a free connection (never failing
            # for want of one): the fastest plain redis-py can be here.
            pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=200)
            client = aioredis.Redis(connection_pool=pool)
        try:

            async def publish(channel: str, payload: dict[str, Any]) -> Any:
                return await client.publish(f"{prefix}:{channel}", json.dumps(payload))

            yield publish
        finally:
            await client.aclose()
    elif system == "broadcaster":
        from broadcaster import Broadcast

        broadcast = Broadcast(redis_url)
        await broadcast.connect()
        try:

            async def publish(channel: str, payload: dict[str, Any]) -> Any:
                return await broadcast.publish(f"{prefix}:{channel}", json.dumps(payload))

            yield publish
        finally:
            await broadcast.disconnect()
    else:
        raise SystemExit(f"unknown system {system!r}")


async def measure(system: str, redis_url: str, callers: int, seconds: float) -> dict[str, Any]:
    prefix = f"bench-pub-{uuid.uuid4().hex[:8]}"
    published = failed = 0
    first_error: str | None = None
    async with publisher(system, redis_url, prefix) as publish:
        await asyncio.gather(
            *(publish("warm", {"n": i}) for i in range(callers)), return_exceptions=True
        )
        stop = time.monotonic() + seconds

        async def caller(index: int) -> None:
            nonlocal published, failed, first_error
            channel = f"room-{index % 50}"
            sequence = 0
            while time.monotonic() < stop:
                try:
                    await publish(channel, {"seq": sequence, "body": "x" * 64})
                    published += 1
                except Exception as exc:  # counted: no caller may fail
                    failed += 1
                    first_error = first_error or repr(exc)
                sequence += 1

        cpu_before = os.times()
        started = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.monotonic() - started
        cpu_after = os.times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "system": system,
        "callers": callers,
        "published_per_s": published / elapsed,
        "failed": failed,
        "first_error": first_error,
        "cpu_us_per_publish": cpu * 1e6 / published if published else None,
    }


async def measure_publish_rate(
    system: str, redis_url: str, callers: int, seconds: float
) -> dict[str, float | None]:
    """:func:`measure` in a process of its own (one worker), for the suite."""
    venv = PEER_VENV_OF.get(system)
    if venv is None:
        python = sys.executable
    else:
        from benchmarks.peer_venvs import ensure_venv

        python = str(await asyncio.to_thread(ensure_venv, venv))
    process = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "benchmarks.publish_rate",
        *("--system", system, "--redis-url", redis_url),
        *("--callers", str(callers), "--seconds", str(seconds)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"publish_rate {system} failed: {err.decode()[-400:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "publish_per_s": result["published_per_s"],
        "publish_failed": float(result["failed"]),
        "publish_cpu_us": result["cpu_us_per_publish"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish_rate")
    parser.add_argument("--system", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    arguments = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    result = run(
        measure(arguments.system, arguments.redis_url, arguments.callers, arguments.seconds)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
