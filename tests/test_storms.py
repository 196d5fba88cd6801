"""Storms: every client arriving or reconnecting at once, as a deploy or a network blip makes
them. Two real uvicorn workers on one real Redis, real websocket clients; nobody is refused,
nobody is evicted as slow before its welcome, every count converges, no live worker is
reaped, and nothing is left in Redis once everyone has gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import serve, wait_for_async_condition
from tools.ports import free_port
from tools.processes import raise_open_files_limit, started, uvicorn_command
from tools.redis_servers import OwnedRedisServer

pytestmark = pytest.mark.slow

#: Clients in the storm (the issue asks for at least 1,500 over two workers).
STORM_CLIENTS = 1_500
#: How long every count may take to converge once the last handshake is done; generous,
#: since the suite shares two cores with the clients and Redis.
SETTLE_TIMEOUT = 60.0


@dataclass
class StormClient:
    """One client of the storm: what it received and how its connection ended."""

    url: str
    ws: ClientConnection | None = None
    counts: list[int] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.counts.clear()
        self.ws = await websockets.connect(self.url, open_timeout=60, close_timeout=1)
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                if "count" in message:
                    self.counts.append(message["count"])
        except websockets.ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a network blip does."""
        assert self.ws is not None and self.reader is not None
        self.ws.transport.abort()
        await asyncio.wait_for(self.reader, 10)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)


@dataclass
class Worker:
    base: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def storm_workers(env: dict[str, str], count: int = 2) -> Iterator[list[Worker]]:
    """``count`` uvicorn processes (one worker each) on one Redis, each logging to a file."""
    with contextlib.ExitStack() as stack:
        workers: list[Worker] = []
        for _ in range(count):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "server.log"
            stream = stack.enter_context(log.open("wb"))
            command = uvicorn_command(
                "tests.apps.cluster_app:app", port, 1, "--backlog", "4096", "--log-level", "info"
            )
            stack.enter_context(
                started(
                    command,
                    f"{base}/healthz",
                    env=env,
                    stdout=stream,
                    stderr=stream,
                    preexec_fn=raise_open_files_limit,
                )
            )
            workers.append(Worker(base, log))
        yield workers


@pytest.fixture
def storm_env(redis_url: str, key_prefix: str, redis_client: object) -> dict[str, str]:
    return {
        "PUBSUB_REDIS_URL": redis_url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HEARTBEAT_TTL": "3",
    }


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def all_counts_are(clients: list[StormClient], expected: int) -> bool:
    return all(c.counts and c.counts[-1] == expected for c in clients)


async def presence_count(base: str, channel: str) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base}/presence/{channel}")
        response.raise_for_status()
        return len(response.json()["presence"])


async def test_a_storm_of_connects_and_reconnects_admits_everyone_and_converges(
    storm_env: dict[str, str],
) -> None:
    raise_open_files_limit()
    with storm_workers(storm_env) as workers:
        clients = [
            StormClient(ws_url(workers[i % 2].base, "/ws/storm")) for i in range(STORM_CLIENTS)
        ]
        frames_per_round: list[int] = []
        for round_ in range(3):  # connect, then abort everyone and reconnect, twice
            if round_:
                await asyncio.gather(*(c.abort() for c in clients))
            await asyncio.gather(*(c.connect() for c in clients))
            await wait_for_async_condition(
                lambda: all_counts_are(clients, STORM_CLIENTS), SETTLE_TIMEOUT
            )
            frames_per_round.append(max(len(c.counts) for c in clients))
            assert await presence_count(workers[0].base, "storm") == STORM_CLIENTS
        # Aborted by the client every round, never closed by the server (1006 is an abort
        # without a close frame; 1008 "too slow" or 1013 "try again" would be a refusal).
        codes = {code for c in clients for code in c.close_codes}
        assert codes <= {1006}, codes
        # Count frames are state: a storm of N joins is not N frames to each client.
        assert max(frames_per_round) < STORM_CLIENTS // 10, frames_per_round

        await asyncio.gather(*(c.close() for c in clients))
        await wait_for_async_condition(
            lambda: _presence_is(workers[1].base, "storm", 0), SETTLE_TIMEOUT
        )
        for worker in workers:
            log = worker.log_text()
            assert "reaped" not in log, log[-2000:]
            assert "was lost" not in log, log[-2000:]
            assert "fell" not in log, log[-2000:]


async def _presence_is(base: str, channel: str, expected: int) -> bool:
    return await presence_count(base, channel) == expected


async def test_a_worker_whose_loop_is_blocked_refuses_no_join_that_arrived_meanwhile(
    storm_env: dict[str, str],
) -> None:
    # Commands time out after 0.5 s: a join in flight when the loop blocks for 3 s finds
    # its reply late, yet Redis answered all along, so nobody may be refused for it.
    env = {**storm_env, "PUBSUB_REDIS_TIMEOUT": "0.5", "PUBSUB_HEARTBEAT_TTL": "6"}
    with storm_workers(env, count=1) as (worker,):
        joiners = [StormClient(ws_url(worker.base, "/ws/stalls")) for _ in range(200)]
        staller = StormClient(ws_url(worker.base, "/stall/stalls?stall=3"))
        everyone = [*joiners, staller]
        joining = asyncio.gather(*(c.connect() for c in joiners))
        await staller.connect()  # its on_connect blocks the worker's loop for 3 s
        await joining
        await wait_for_async_condition(lambda: all_counts_are(everyone, len(everyone)), 60)
        assert not any(c.close_codes for c in everyone)
        await asyncio.gather(*(c.close() for c in everyone))
        log = worker.log_text()
        assert "could not join" not in log, log[-2000:]


async def test_a_stale_entry_where_the_worker_holds_no_socket_is_swept(
    storm_env: dict[str, str], key_prefix: str, redis_client: aioredis.Redis
) -> None:
    env = {**storm_env, "PUBSUB_HEARTBEAT_TTL": "1.5"}
    with storm_workers(env, count=1) as (worker,):
        client = StormClient(ws_url(worker.base, "/ws/home"))
        await client.connect()
        await wait_for_async_condition(lambda: all_counts_are([client], 1), 10)
        async with httpx.AsyncClient(timeout=10) as http:
            worker_id = (await http.get(f"{worker.base}/healthz")).json()["worker"]
        # What a leave that never reached Redis leaves behind: an entry owned by this live
        # worker, in a channel its record lists, where it holds no socket.
        keys, instance = RedisKeys(key_prefix), f"{worker_id}#1"
        await redis_client.sadd(keys.members("left-behind"), "ghost")
        await redis_client.hset(keys.owners("left-behind"), "ghost", instance)
        await redis_client.sadd(keys.worker_channels(instance), "left-behind")
        assert await presence_count(worker.base, "left-behind") == 1
        await wait_for_async_condition(lambda: _presence_is(worker.base, "left-behind", 0), 30)
        assert await redis_client.sismember(keys.worker_channels(instance), "home")
        await client.close()


async def test_a_redis_that_does_not_answer_still_refuses_with_1013_and_says_why(
    owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    settings = make_settings(key_prefix, owned_redis.url)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        owned_redis.stop()
        ws = await websockets.connect(f"{url}/ws/down", open_timeout=10)
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(30):
                await ws.recv()
        assert ws.close_code == 1013
        reason = ws.close_reason or ""
        # The cause and where, never only an exception's class.
        assert "does not answer" in reason and str(owned_redis.port) in reason, reason
        owned_redis.start()
