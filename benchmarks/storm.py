"""The storm scenario: N clients connect at the same moment; then every TCP connection is
aborted (a reset, no close frame) and all reconnect at the same moment, twice.

Each round (``connect``, ``reconnect1``, ``reconnect2``) runs from the moment the clients
start (after the aborts, for a reconnect) until the storm has settled: every handshake done
or refused; every admitted client has a message published after its handshake (the driver
publishes one once every handshake is done, and again every ``PROBE_INTERVAL`` until all
have it), or, on a system with a count hook, every admitted client's last count frame shows
the number admitted; and then the servers are quiet (no frame and almost no server CPU for
``QUIET_SECONDS``). Server and Redis CPU are taken over exactly that window.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from benchmarks.client_pool import ClientPool
from benchmarks.clients import now_us
from benchmarks.publishers import Publisher, make_payload, publisher_for
from benchmarks.redis_server import BenchRedis
from benchmarks.scenarios import Values, server_env
from benchmarks.servers import CpuSnapshot, RunningServer, running_server
from benchmarks.storm_clients import HANDSHAKE_TIMEOUT, storm_client_main
from benchmarks.targets import Target

CHANNEL = "storm"
ROUNDS = ("connect", "reconnect1", "reconnect2")
#: Connections per client process at most (several processes; each far below the
#: 20,000 open files a process may hold here).
CLIENTS_PER_PROCESS = 2500
#: The clients start together this long after the driver tells them to.
START_DELAY = 0.3
POLL_INTERVAL = 0.1
PROBE_INTERVAL = 0.25
#: How long after the last handshake a round may take to settle.
SETTLE_TIMEOUT = 60.0
#: The servers are quiet when, for this long, no frame arrives and the server processes use
#: less than QUIET_CPU_SHARE of one core.
QUIET_SECONDS = 0.5
QUIET_CPU_SHARE = 0.03
QUIET_TIMEOUT = 10.0
#: Why clients were refused, per configuration and round (for the report's notes).
REFUSALS: list[str] = []


def client_processes(clients: int) -> int:
    return max(2, math.ceil(clients / CLIENTS_PER_PROCESS))


class StormPool(ClientPool):
    """Storm client processes (``benchmarks.storm_clients``)."""

    def __init__(self, target: Target, clients: int) -> None:
        super().__init__(target.protocol, client_processes(clients), main=storm_client_main)

    async def start_round(self, urls: list[tuple[str, str]], start_us: int, abort: bool) -> None:
        shares = [urls[i :: len(self._pipes)] for i in range(len(self._pipes))]
        await asyncio.gather(
            *(
                self._ask(pipe, "round", {"start_us": start_us, "urls": share, "abort": abort})
                for pipe, share in zip(self._pipes, shares, strict=True)
            )
        )

    async def stats(self, expected: int) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(self._ask(pipe, "stats", expected) for pipe in self._pipes)
        )
        total: dict[str, Any] = {"refused": Counter(), "samples": {}}
        for reply in replies:
            total["refused"].update(reply.pop("refused"))
            for kind, samples in reply.pop("samples").items():
                total["samples"].setdefault(kind, []).extend(samples)
            for key, value in reply.items():
                merge = max if key.endswith(("_us", "_max")) else sum
                total[key] = merge((total.get(key, 0), value))
        return total


@dataclass
class Reading:
    """Server and Redis CPU seconds, and frames received, at one moment."""

    at: float
    server: CpuSnapshot
    frames: int
    redis_psutil: float | None
    redis_info: float | None

    @classmethod
    async def take(cls, server: RunningServer, redis: BenchRedis | None, frames: int) -> Reading:
        redis_psutil = redis_info = None
        if redis is not None:
            redis_psutil = redis.cpu_seconds() if redis.owned else None
            redis_info = sum(await asyncio.to_thread(redis.info_cpu_by_node))
        return cls(time.monotonic(), server.cpu_snapshot(), frames, redis_psutil, redis_info)


def _quiet_since(readings: list[Reading]) -> Reading | None:
    """The reading since which nothing happened for QUIET_SECONDS, if the last ones say so."""
    last = readings[-1]
    for earlier in reversed(readings[:-1]):
        if last.at - earlier.at >= QUIET_SECONDS:
            cpu = RunningServer.cpu_delta(earlier.server, last.server).total
            quiet = last.frames == earlier.frames and cpu < QUIET_CPU_SHARE * (last.at - earlier.at)
            return earlier if quiet else None
    return None


@dataclass
class Storm:
    target: Target
    server: RunningServer
    redis: BenchRedis
    pool: StormPool
    publisher: Publisher
    clients: int

    async def round(self, name: str, abort: bool) -> Values:
        """One round: start the clients together, follow them until settled and quiet."""
        redis = self.redis if self.target.uses_redis else None
        url = self.target.client_url(self.server.port, CHANNEL)
        before = await Reading.take(self.server, redis, 0)
        start_us = now_us() + int(START_DELAY * 1e6)
        await self.pool.start_round([(url, CHANNEL)] * self.clients, start_us, abort)
        handshakes_by = time.monotonic() + START_DELAY + HANDSHAKE_TIMEOUT + 10
        settle_by: float | None = None
        next_probe = 0.0
        probes = 0
        expected = -1
        settled_us: int | None = None
        ready_since: float | None = None
        quiet: Reading | None = None
        readings = [before]
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            stats = await self.pool.stats(expected)
            readings.append(await Reading.take(self.server, redis, stats["frames"]))
            now = time.monotonic()
            done = stats["pending"] == 0
            if done and settle_by is None:
                settle_by = now + SETTLE_TIMEOUT
            admitted = stats["admitted"]
            if not done or not admitted:
                settled_us = None
            elif self.target.count_hook:
                right = expected == admitted and stats["count_right"] == admitted
                settled_us = stats["count_last_us"] if right else None
            elif stats["probe_missing"] == 0:
                settled_us = stats["probe_last_us"]
            else:
                settled_us = None
                if now >= next_probe:
                    await self.publisher.publish(CHANNEL, make_payload(probes))
                    probes += 1
                    next_probe = now + PROBE_INTERVAL
            expected = admitted
            quiet = _quiet_since(readings)
            if done and (settled_us is not None or not admitted):
                ready_since = now if ready_since is None else ready_since
                if quiet is not None or now - ready_since > QUIET_TIMEOUT:
                    break
            else:
                ready_since = None
            if now > (settle_by if settle_by is not None else handshakes_by):
                break  # never settled: the window ends now
        end = quiet if quiet is not None else readings[-1]
        figures = self._figures(name, stats, before, end, start_us, settled_us, probes)
        figures[f"{name}_quiet"] = 1.0 if quiet is not None else 0.0
        return figures

    def _figures(
        self,
        name: str,
        stats: dict[str, Any],
        before: Reading,
        end: Reading,
        start_us: int,
        settled_us: int | None,
        probes: int,
    ) -> Values:
        admitted = stats["admitted"]
        per = 1000.0 / admitted if admitted else None  # seconds -> ms per admitted client
        cpu = RunningServer.cpu_delta(before.server, end.server)
        user, system = cpu.split()
        last_handshake = stats["handshake_last_us"]
        refused: Counter[str] = stats["refused"]
        values: Values = {
            "admitted": float(admitted),
            "refused": float(sum(refused.values())),
            "cpu_ms": cpu.total * per if per else None,
            "cpu_user_ms": user * per if per else None,
            "cpu_sys_ms": system * per if per else None,
            "redis_cpu_ms": _per(end.redis_psutil, before.redis_psutil, per),
            "redis_info_cpu_ms": _per(end.redis_info, before.redis_info, per),
            "handshakes_s": (last_handshake - start_us) / 1e6 if last_handshake else None,
            "settled_s": (settled_us - start_us) / 1e6 if settled_us else None,
            "settle_after_handshakes_s": (settled_us - last_handshake) / 1e6
            if settled_us and last_handshake
            else None,
            "settled": 1.0 if settled_us else 0.0,
            "window_s": end.at - before.at - START_DELAY,
            "count_frames_mean": stats["count_frames"] / admitted if admitted else None,
            "count_frames_max": float(stats["count_frames_max"]),
            "frames_mean": stats["frames"] / self.clients,
            "frames_max": float(stats["frames_max"]),
            "probes": float(probes),
            **{f"refused_{kind.replace(' ', '_')}": float(n) for kind, n in refused.items()},
        }
        if refused:
            kinds = "; ".join(
                f"{kind}: {n} (e.g. {'; '.join(repr(s) for s in stats['samples'][kind][:1])})"
                for kind, n in refused.most_common()
            )
            REFUSALS.append(
                f"storm-{self.clients} {self.target.name} {name}: {sum(refused.values())} "
                f"of {self.clients} refused: {kinds}"
            )
        return {f"{name}_{key}": value for key, value in values.items()}


def _per(after: float | None, before: float | None, per: float | None) -> float | None:
    if after is None or before is None or per is None:
        return None
    return (after - before) * per


async def measure_storm(target: Target, redis: BenchRedis, clients: int) -> Values:
    """The storm scenario for ``target`` with ``clients`` clients (see the module's doc)."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    try:
        with running_server(target, server_env(target, redis.url, prefix)) as server:
            pool = StormPool(target, clients)
            try:
                publisher = publisher_for(target, server.port, redis.url, prefix)
                await publisher.start()
                # Its first publish opens its connections: not inside a round.
                await publisher.publish(f"{CHANNEL}-warmup", make_payload(-1))
                try:
                    storm = Storm(target, server, redis, pool, publisher, clients)
                    values: Values = {"clients": float(clients)}
                    for index, name in enumerate(ROUNDS):
                        values.update(await storm.round(name, abort=index > 0))
                        await asyncio.sleep(1.0)
                    return values
                finally:
                    await publisher.close()
            finally:
                pool.close()
    finally:
        await asyncio.to_thread(redis.delete_prefix, prefix)
