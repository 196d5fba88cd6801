"""The faults of issue 13's matrix, each injected, lasted and healed by one coroutine, and
the rig they act on: two workers on an owned redis-server (through a TCP proxy for the
network faults) with the workload of ``tests.fault_workload`` running against them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from tests.fault_workload import BEAT, TTL, Fault, Rig, running_workers
from tests.live import wait_for_async_condition
from tests.tcp_proxy import DeafeningProxy
from tests.test_faults import stalled
from tools.redis_servers import OwnedRedisServer

STALL = 2.0  # seconds a stall lasts: longer than a command's time limit, shorter than a TTL
OUTAGE = 1.0  # seconds Redis stays down in a restart
OOM = 2 * BEAT  # seconds Redis refuses writes: joins, leaves, stores and heartbeats fail


def _server(rig: Rig) -> OwnedRedisServer:
    assert rig.server is not None
    return rig.server


def _proxy(rig: Rig) -> DeafeningProxy:
    assert rig.proxy is not None
    return rig.proxy


async def redis_stall_during_publishes(rig: Rig) -> None:
    published = rig.publisher.n
    async with stalled(_server(rig), STALL):
        pass  # the publisher goes on publishing into the stall
    assert rig.publisher.n > published


async def redis_stall_during_leaves(rig: Rig) -> None:
    async with stalled(_server(rig), STALL):
        assert await rig.churn.leave_some(6) >= 3


async def client_kill_link(rig: Rig) -> None:
    assert await rig.admin.client_kill_filter(_type="pubsub") >= 2  # both workers' links


async def client_kill_commands(rig: Rig) -> None:
    assert await rig.admin.client_kill_filter(_type="normal", skipme=True) >= 2


async def redis_restart(rig: Rig) -> None:
    server = _server(rig)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(OUTAGE)  # the outage's duration
    await asyncio.to_thread(server.start)  # same port, every key lost


async def redis_out_of_memory(rig: Rig) -> None:
    await rig.admin.config_set("maxmemory-policy", "noeviction")
    await rig.admin.config_set("maxmemory", "1")  # every write is refused
    await asyncio.sleep(OOM)  # the fault's duration
    await rig.admin.config_set("maxmemory", "0")


async def _instances(rig: Rig, worker_id: str) -> list[str]:
    workers = {w.decode() for w in await rig.admin.smembers(rig.keys.workers)}
    return [w for w in workers if w.startswith(f"{worker_id}#")]


async def worker_paused_past_ttl(rig: Rig) -> None:
    """SIGSTOP a worker; SIGCONT it as soon as its peer claimed it for reaping."""
    paused = rig.workers[1]
    instances = await _instances(rig, paused.worker_id)
    assert instances

    async def claimed() -> bool:
        keys = [rig.keys.heartbeat(i) for i in instances]
        keys += [rig.keys.worker_channels(i) for i in instances]
        return not await rig.admin.exists(*keys)

    paused.server.pause()
    try:
        await wait_for_async_condition(claimed, TTL + 2 * BEAT + 2)
    finally:
        paused.server.resume()


async def worker_kill_9(rig: Rig) -> None:
    """kill -9 a worker; the fault ends when its heartbeat expires (then it may be reaped)."""
    doomed = rig.workers[1]
    instances = await _instances(rig, doomed.worker_id)
    doomed.alive = False
    doomed.server.kill()

    async def expired() -> bool:
        return not await rig.admin.exists(*(rig.keys.heartbeat(i) for i in instances))

    await wait_for_async_condition(expired, TTL + 1)


async def proxy_stall(rig: Rig) -> None:
    _proxy(rig).stall()
    await asyncio.sleep(STALL)  # the stall's duration
    _proxy(rig).flow()


async def proxy_drop(rig: Rig) -> None:
    assert _proxy(rig).drop() >= 4  # at least each worker's link and a command connection


FAULTS = [
    Fault("redis-stall-publishes", redis_stall_during_publishes),
    Fault("redis-stall-leaves", redis_stall_during_leaves),
    Fault("client-kill-link", client_kill_link),
    Fault("client-kill-commands", client_kill_commands),
    Fault("redis-restart", redis_restart, loses_data=True),
    Fault("redis-oom", redis_out_of_memory),
    Fault("worker-paused-past-ttl", worker_paused_past_ttl),
    Fault("worker-kill-9", worker_kill_9),
    Fault("proxy-stall", proxy_stall),
    Fault("proxy-drop", proxy_drop),
]


@contextlib.asynccontextmanager
async def rig_on(server: OwnedRedisServer, prefix: str, proxied: bool) -> AsyncIterator[Rig]:
    """Two workers on ``server`` (through a TCP proxy when ``proxied``), and the workload."""
    async with contextlib.AsyncExitStack() as stack:
        proxy = None
        url = server.url
        if proxied:
            proxy = DeafeningProxy("127.0.0.1", server.port)
            await stack.enter_async_context(proxy.running())
            url = f"redis://127.0.0.1:{proxy.port}/0"
        admin = aioredis.Redis.from_url(server.url)
        stack.push_async_callback(admin.aclose)
        found = await stack.enter_async_context(running_workers(url, prefix))
        rig = Rig(found, admin, prefix, server, proxy)
        stack.push_async_callback(rig.close)
        yield rig
