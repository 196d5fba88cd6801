"""The workload of issue 13's fault matrix, and the invariants of SPEC §6 it is checked by.

Real uvicorn worker processes (``tests.apps.cluster_app``), real websocket clients, a real
Redis. Three channels: ``churn`` (clients joining and leaving all the time), ``plain``
(publications, delivered at most once) and ``hist`` (publications with history, whose
subscribers resume with ``?since=<last id>`` whenever their socket drops).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
import websockets
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.live import connect, wait_for_async_condition, wait_for_condition
from tests.tcp_proxy import DeafeningProxy
from tools.processes import ServerProcess, uvicorn_server
from tools.redis_servers import OwnedRedisServer

#: Heartbeat TTL of the workers: a heartbeat period is a third of it.
TTL = 4.5
BEAT = TTL / 3
#: The workers' time limit per Redis command (a publish gets twice that).
REDIS_TIMEOUT = 0.75
CHURN, PLAIN, HIST = "churn", "plain", "hist"
CHANNELS = (CHURN, PLAIN, HIST)
APP = "tests.apps.cluster_app:app"
#: What a client does not survive: the worker gone, the socket reset, the handshake refused.
CONNECT_ERRORS = (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed)

AdminClient = aioredis.Redis | RedisCluster


def worker_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        **extra,
        "PUBSUB_REDIS_URL": redis_url,
        "PUBSUB_KEY_PREFIX": prefix,
        "PUBSUB_HEARTBEAT_TTL": str(TTL),
        "PUBSUB_REDIS_TIMEOUT": str(REDIS_TIMEOUT),
        "PUBSUB_RECONNECT_DELAY_INITIAL": "0.05",
        "PUBSUB_RECONNECT_DELAY_MAX": "0.5",
        "PUBSUB_PROBE_INTERVAL": "0.5",
        "PUBSUB_PROBE_TIMEOUT": "0.5",
        "PUBSUB_CLOSE_TIMEOUT": "2",
        "PUBSUB_HISTORY_CHANNELS": HIST,
    }


@dataclass
class Worker:
    """One uvicorn worker process of the app; ``alive`` is False once the test killed it."""

    server: ServerProcess
    worker_id: str
    alive: bool = True

    @property
    def http(self) -> str:
        return self.server.base

    @property
    def ws(self) -> str:
        return self.server.base.replace("http://", "ws://")


@contextlib.contextmanager
def workers(
    redis_url: str, prefix: str, count: int = 2, **extra_env: str
) -> Iterator[list[Worker]]:
    """``count`` separate uvicorn processes (one worker each), so that one can be paused or
    killed alone; ``extra_env``: more settings for them."""
    with contextlib.ExitStack() as stack:
        found = []
        for _ in range(count):
            env = worker_env(redis_url, prefix, **extra_env)
            server = stack.enter_context(uvicorn_server(APP, env))
            health = httpx.get(f"{server.base}/healthz", timeout=5).json()
            found.append(Worker(server, str(health["worker"])))
        yield found


@contextlib.asynccontextmanager
async def running_workers(
    redis_url: str, prefix: str, count: int = 2, **extra_env: str
) -> AsyncIterator[list[Worker]]:
    """:func:`workers`, started and stopped off the event loop (which may be serving a proxy
    the workers reach Redis through)."""
    started = workers(redis_url, prefix, count, **extra_env)
    found = await asyncio.to_thread(started.__enter__)
    try:
        yield found
    finally:
        await asyncio.to_thread(started.__exit__, None, None, None)


class Client:
    """One real websocket; a reader task records the last count and hands on the rest."""

    def __init__(
        self, ws: ClientConnection, worker: Worker, on_data: Callable[[Any], None]
    ) -> None:
        self.ws = ws
        self.worker = worker
        self.last_count: int | None = None
        self.closed = asyncio.Event()
        self._on_data = on_data
        self._reader = asyncio.create_task(self._read())

    @property
    def open(self) -> bool:
        return not self.closed.is_set()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if isinstance(message, dict) and set(message) == {"count"}:
                    self.last_count = int(message["count"])
                else:
                    self._on_data(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def leave(self, abort: bool = False) -> None:
        if abort:
            self.ws.transport.abort()
        else:
            with contextlib.suppress(*CONNECT_ERRORS):
                await asyncio.wait_for(self.ws.close(), 3)
        await self.closed.wait()


@dataclass
class Subscriber:
    """A logical client that stays subscribed: when its socket drops (or a join is refused)
    it connects again to a live worker, on ``hist`` resuming after the last id it got."""

    rig: Rig
    channel: str
    index: int
    seen: list[Any] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    gaps: list[Any] = field(default_factory=list)
    current: Client | None = None
    connections: int = 0
    #: On ``hist``: (n, stream id, the ``since`` of the socket it came on), for reports.
    arrivals: list[tuple[int, str, str]] = field(default_factory=list)
    resumed_from: str = ""

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._run())

    @property
    def connected(self) -> bool:
        return (
            self.current is not None and self.current.open and self.current.last_count is not None
        )

    def _on_data(self, message: Any) -> None:
        if "history_gap" in message:
            # With how many messages seen: which of them the notice came between.
            self.gaps.append((message["history_gap"], len(self.seen)))
        elif self.channel == HIST:
            self.ids.append(message["id"])
            self.seen.append(message["data"]["n"])
            self.arrivals.append((message["data"]["n"], message["id"], self.resumed_from))
        else:
            self.seen.append(message["n"])

    def announced_lost(self, n: int) -> bool:
        """True if a gap notice came where ``n`` is missing: between the messages seen
        just before and just after it."""
        for _, seen_before in self.gaps:
            before = self.seen[seen_before - 1] if seen_before else 0
            after = self.seen[seen_before] if seen_before < len(self.seen) else math.inf
            if before < n < after:
                return True
        return False

    async def _run(self) -> None:
        attempt = self.index
        while not self.rig.stopping:
            attempt += 1
            worker = self.rig.live_worker(attempt)
            since = f"?since={self.ids[-1]}" if self.channel == HIST and self.ids else ""
            try:
                ws = await connect(f"{worker.ws}/ws/{self.channel}{since}", close_timeout=2)
            except CONNECT_ERRORS:
                await asyncio.sleep(0.2)  # a client's reconnect delay
                continue
            self.connections += 1
            self.resumed_from = f"{worker.worker_id}{since}#{self.connections}"
            self.current = Client(ws, worker, self._on_data)
            await self.current.closed.wait()
            await asyncio.sleep(0.1)  # a client's reconnect delay


class Churn:
    """``actors`` loops joining and leaving ``churn`` on random live workers, keeping between
    ``low`` and ``high`` clients; leaves are closes or aborts (no close handshake)."""

    def __init__(self, rig: Rig, actors: int = 3, low: int = 4, high: int = 12) -> None:
        self.rig = rig
        self.clients: list[Client] = []
        self.joins = self.leaves = self.refused = 0
        self._actors = actors
        self._low, self._high = low, high
        self._rng = random.Random(13)
        self.stopping = False

    def live(self) -> list[Client]:
        self.clients = [c for c in self.clients if c.open]
        return self.clients

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._act()) for _ in range(self._actors)]

    async def _act(self) -> None:
        while not self.stopping:
            size = len(self.live())
            if size < self._low or (size < self._high and self._rng.random() < 0.5):
                await self.join()
            else:
                await self.leave_some(1)
            await asyncio.sleep(0.05)  # the churn's pace

    async def join(self) -> None:
        worker = self.rig.live_worker(self._rng.randrange(1000))
        try:
            ws = await connect(f"{worker.ws}/ws/{CHURN}", close_timeout=2)
        except CONNECT_ERRORS:
            self.refused += 1
            return
        self.joins += 1
        self.clients.append(Client(ws, worker, lambda _: None))

    async def leave_some(self, count: int) -> int:
        """Close (or abort) ``count`` clients at once; how many left."""
        leaving = self.live()[:count]
        self.clients = self.clients[count:]
        self.leaves += len(leaving)
        await asyncio.gather(*(c.leave(abort=self._rng.random() < 0.3) for c in leaving))
        return len(leaving)


class Publisher:
    """Publishes numbered messages on ``plain`` and ``hist`` through the workers' /publish
    route, round robin over the live workers; records which publishes succeeded (200)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.ok: dict[str, list[int]] = {PLAIN: [], HIST: []}
        self.failed = 0
        self.n = 0
        self.stopping = False

    async def publish(self, http: httpx.AsyncClient, n: int) -> None:
        for channel in (PLAIN, HIST):
            worker = self.rig.live_worker(n)
            try:
                response = await http.post(f"{worker.http}/publish/{channel}", json={"n": n})
            except httpx.HTTPError:
                self.failed += 1
                continue
            if response.status_code == 200:
                self.ok[channel].append(n)
            else:
                self.failed += 1

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=3) as http:
            while not self.stopping:
                self.n += 1
                await self.publish(http, self.n)
                await asyncio.sleep(0.02)  # the publishing pace

    async def final(self) -> int:
        """One last publish on each channel, once no fault is active; returns its number."""
        self.n += 1
        async with httpx.AsyncClient(timeout=5) as http:
            await self.publish(http, self.n)
        assert self.ok[PLAIN][-1] == self.ok[HIST][-1] == self.n, "the final publish failed"
        return self.n


@dataclass
class Figures:
    """What one case measured."""

    name: str
    duplicates: int = 0
    losses_hist: int = 0
    losses_plain: int = 0
    out_of_order: int = 0
    gaps: int = 0
    #: Messages lost on ``hist`` that a gap notice announced (only where Redis lost data).
    announced_losses: int = 0
    converged_s: float = float("nan")
    #: Seconds from the fault's end until the churn's last operation ended.
    settle_s: float = float("nan")
    published_ok: int = 0
    publish_failed: int = 0
    reconnects: int = 0
    churn_ops: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.name:<28} duplicates {self.duplicates:>3}  hist losses {self.losses_hist:>3}"
            f"  plain losses {self.losses_plain:>3}  converged {self.converged_s:5.2f}s"
            f" (+{self.settle_s:4.2f}s)"
            f"  published {self.published_ok:>4} ok / {self.publish_failed:>3} failed"
            f"  resumes {self.reconnects:>3}  churn ops {self.churn_ops:>4}"
            f"  gap notices {self.gaps:>2} ({self.announced_losses} announced lost)"
        )


class Rig:
    """The workers, the workload running against them, and Redis as the test sees it."""

    def __init__(
        self,
        workers: list[Worker],
        admin: AdminClient,
        prefix: str,
        server: OwnedRedisServer | None = None,
        proxy: DeafeningProxy | None = None,
    ) -> None:
        self.workers = workers
        self.admin = admin
        self.keys = RedisKeys(prefix)
        #: What Redis faults act on: the server, and the proxy the workers reach it through.
        self.server = server
        self.proxy = proxy
        self.stopping = False
        self.last_problems: list[str] = []
        self.dropped = 0
        self.subscribers = [
            Subscriber(self, channel, i) for channel in (PLAIN, HIST) for i in range(4)
        ]
        self.churn = Churn(self)
        self.publisher = Publisher(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: asyncio.Task[None] | None = None

    def live_worker(self, n: int) -> Worker:
        live = [w for w in self.workers if w.alive]
        return live[n % len(live)]

    async def start(self) -> None:
        """Subscribers connect; then churn and publishing begin."""
        self._tasks = [s.start() for s in self.subscribers]
        await wait_for_condition(lambda: all(s.connected for s in self.subscribers), 15)
        self._tasks += self.churn.start()
        self._tasks.append(asyncio.create_task(self._drop_sockets()))
        self._publishing = asyncio.create_task(self.publisher.run())
        await self.publishing_resumed(20)

    async def publishing_resumed(self, successes: int, timeout: float = 15) -> None:
        """Wait until ``successes`` more publishes succeeded on each channel."""
        ok = self.publisher.ok
        target = {c: len(ok[c]) + successes for c in ok}
        await wait_for_condition(lambda: all(len(ok[c]) >= target[c] for c in ok), timeout)

    async def _drop_sockets(self) -> None:
        """Subscribers lose their socket now and then (a flaky network): on ``hist`` they
        resume after their last id, possibly on the other worker."""
        rng = random.Random(7)
        while not self.churn.stopping:
            await asyncio.sleep(0.4)  # how often a subscriber's socket drops
            current = rng.choice(self.subscribers).current
            if current is not None and current.open:
                current.ws.transport.abort()
                self.dropped += 1

    async def stop_churn(self) -> None:
        self.churn.stopping = True
        await asyncio.gather(*self._tasks[len(self.subscribers) :])

    async def stop_publishing(self) -> None:
        self.publisher.stopping = True
        if self._publishing is not None:
            await self._publishing

    async def close(self) -> None:
        self.stopping = self.churn.stopping = self.publisher.stopping = True
        clients = [*self.churn.clients, *(s.current for s in self.subscribers if s.current)]
        for client in clients:
            client.ws.transport.abort()
        tasks = [*self._tasks, *([self._publishing] if self._publishing else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- presence ----------------------------------------------------------------------

    def holders(self, channel: str) -> list[Client]:
        """The live sockets the test holds in ``channel``."""
        if channel == CHURN:
            return self.churn.live()
        return [s.current for s in self.subscribers if s.channel == channel and s.current]

    async def presence_disagreements(self) -> list[str]:
        """Where presence does not agree yet (empty once converged): Redis's members against
        every live worker's own connections and mirror, the sockets the test holds, and
        each socket's last count."""
        problems = []
        if not all(s.connected for s in self.subscribers):
            problems.append("a subscriber is not connected")
        views: list[dict[str, Any]] = []
        async with httpx.AsyncClient(timeout=2) as http:
            for worker in (w for w in self.workers if w.alive):
                views.append(
                    {c: (await http.get(f"{worker.http}/mirror/{c}")).json() for c in CHANNELS}
                )
        for channel in CHANNELS:
            in_redis = {m.decode() for m in await self.admin.smembers(self.keys.members(channel))}
            local = [set(v[channel]["local"]) for v in views]
            union = set().union(*local)
            holders = [c for c in self.holders(channel) if c.open]
            counts = sorted({c.last_count for c in holders}, key=str)
            if in_redis != union or sum(map(len, local)) != len(union):
                problems.append(f"{channel}: Redis {len(in_redis)} != workers {len(union)}")
            for worker, view in zip((w for w in self.workers if w.alive), views, strict=True):
                mirror = set(view[channel]["mirror"])
                # A worker mirrors a channel only while it holds sockets there.
                if view[channel]["local"] and mirror != in_redis:
                    problems.append(
                        f"{channel}: mirror of {worker.worker_id} has {sorted(mirror - in_redis)}"
                        f" beyond Redis and lacks {sorted(in_redis - mirror)}"
                    )
            hearing = sum(1 for v in views if v[channel]["local"])
            subscribed = await self.subscribers_of(self.keys.topic(channel))
            if subscribed != hearing:
                problems.append(f"{channel}: {subscribed} links subscribed, {hearing} wanted")
            if len(in_redis) != len(holders) or counts != [len(holders)]:
                problems.append(
                    f"{channel}: Redis {len(in_redis)}, sockets {len(holders)}, counts {counts}"
                )
        return problems

    async def subscribers_of(self, topic: str) -> int:
        """How many pub/sub links Redis has subscribed to ``topic`` (one per worker that
        holds sockets in its channel)."""
        if isinstance(self.admin, RedisCluster):
            # Through redis-py's own command, whose name ("PUBSUB SHARDNUMSUB") the node's
            # reply parser and the cluster's merge both know: sent as "PUBSUB",
            # "SHARDNUMSUB", the merge got the node's flat reply unparsed and failed.
            node = self.admin.get_node_from_key(topic)
            reply = await self.admin.pubsub_shardnumsub(topic, target_nodes=node)
        else:
            reply = await self.admin.pubsub_numsub(topic)
        return int(reply[0][1])

    async def converged(self) -> bool:
        try:
            self.last_problems = await self.presence_disagreements()
        except (httpx.HTTPError, aioredis.RedisError) as exc:
            self.last_problems = [repr(exc)]
        return not self.last_problems

    # -- delivery ----------------------------------------------------------------------

    def delivery(self, figures: Figures) -> None:
        """Duplicates, losses and order per subscriber, against the publishes that succeeded."""
        ok = {c: set(n) for c, n in self.publisher.ok.items()}
        for s in self.subscribers:
            dups = len(s.seen) - len(set(s.seen)) + len(s.ids) - len(set(s.ids))
            figures.duplicates += dups
            missing = ok[s.channel] - set(s.seen)
            if s.channel == HIST:
                announced = {n for n in missing if s.announced_lost(n)}
                figures.announced_losses += len(announced)
                missing -= announced
                figures.losses_hist += len(missing)
                in_order = [n for n in s.seen if n in ok[HIST]]
                ids = [tuple(map(int, i.split("-"))) for i in s.ids]
                if in_order != sorted(in_order) or ids != sorted(ids):
                    figures.out_of_order += 1
                # A restarted Redis without persistence lost the stream: what it lost is
                # no silent loss if the client was told (a gap notice where it is missing).
                figures.gaps += len(s.gaps)
                if missing:
                    figures.problems.append(
                        f"hist subscriber {s.index}: {len(missing)} missing "
                        f"(first {sorted(missing)[:5]}), gaps {s.gaps[:2]}"
                    )
            else:
                figures.losses_plain += len(missing)
            if dups:
                twice = {n for n in s.seen if s.seen.count(n) > 1}
                figures.problems.append(
                    f"{s.channel} subscriber {s.index}: {dups} duplicates: "
                    f"{[a for a in s.arrivals if a[0] in twice] or sorted(twice)}"
                )
            figures.reconnects += s.connections - 1


Step = Callable[[Rig], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    """A fault: ``run`` injects it, lets it last, heals it, and returns once it is over.
    ``loses_data``: Redis loses what it had stored (a restart without persistence), so
    clients may be told of gaps; for every other fault a gap notice is a defect."""

    name: str
    run: Step
    loses_data: bool = False


def convergence_limit() -> float:
    """Two heartbeat periods (SPEC §6); ``MATRIX_LIMIT`` (seconds) raises it, to measure how
    long a case that fails takes to converge."""
    return float(os.environ.get("MATRIX_LIMIT", 2 * BEAT))


async def run_case(rig: Rig, fault: Fault, load: float = 0.0) -> Figures:
    """Start the workload (and let it run ``load`` seconds), inject the fault, heal it,
    then measure: presence must converge within ``convergence_limit`` after the fault ends
    (and the churn stopped), every subscriber must get the final publish, and delivery is
    counted."""
    figures = Figures(fault.name)
    limit = convergence_limit()
    await rig.start()
    await asyncio.sleep(load)  # how long the load runs before the fault (a soak's length)
    await fault.run(rig)
    ended = time.monotonic()
    await rig.stop_churn()  # membership stops changing: from now on it must settle
    figures.settle_s = time.monotonic() - ended
    try:
        figures.converged_s = await wait_for_async_condition(rig.converged, limit)
    except AssertionError:
        figures.problems.append(
            f"presence did not converge within {limit:.1f}s: {rig.last_problems}"
        )
    await rig.publishing_resumed(10)
    await rig.stop_publishing()
    final = await rig.publisher.final()
    try:
        await wait_for_condition(lambda: all(final in s.seen for s in rig.subscribers), 10)
    except AssertionError:
        figures.problems.append("a subscriber never got the final publish")
    rig.delivery(figures)
    figures.published_ok = sum(len(n) for n in rig.publisher.ok.values())
    figures.publish_failed = rig.publisher.failed
    figures.churn_ops = rig.churn.joins + rig.churn.leaves
    return figures
