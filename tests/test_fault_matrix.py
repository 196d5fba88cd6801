"""Issue 13's fault matrix: each fault of SPEC §6 under one workload (join/leave churn, and
publishing on a plain and a history channel to subscribers that resume), with real
redis-server, real uvicorn worker processes and real clients; then SPEC §6's invariants:
no duplicates, no loss for resuming clients on the history channel, presence converged
within two heartbeat periods after the fault ended. Each case prints its figures.

The same on a Redis Cluster with replicas when a shard master is killed, and across a
Sentinel failover. A longer soak: ``python -m tools.soak --minutes N``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.cluster import RedisCluster as SyncRedisCluster

from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.fault_workload import (
    BEAT,
    HIST,
    TTL,
    Fault,
    Figures,
    Rig,
    run_case,
    running_workers,
    wait_until_async,
)
from tests.tcp_proxy import DeafeningProxy
from tests.test_faults import stalled
from tools.redis_servers import OwnedRedisCluster, OwnedRedisServer, OwnedSentinel

pytestmark = pytest.mark.slow

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
        await wait_until_async(claimed, TTL + 2 * BEAT + 2)
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

    await wait_until_async(expired, TTL + 1)


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
    Fault("redis-restart", redis_restart),
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


def check(figures: Figures) -> None:
    print(f"\n{figures.line()}")
    assert figures.problems == []
    assert figures.duplicates == 0
    assert figures.losses_hist == 0
    assert figures.out_of_order == 0
    assert figures.converged_s <= 2 * BEAT


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_invariants_hold_under_the_fault(
    fault: Fault, owned_redis: OwnedRedisServer, key_prefix: str
) -> None:
    async with rig_on(owned_redis, key_prefix, proxied=fault.name.startswith("proxy")) as rig:
        figures = await run_case(rig, fault)
    check(figures)


# -- failovers -------------------------------------------------------------------------


def _master_of(cluster: OwnedRedisCluster, key: str) -> OwnedRedisServer:
    client = SyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        name = str(client.get_node_from_key(key).name)
    finally:
        client.close()
    return next(node for node in cluster.nodes if node.address == name)


@pytest.fixture
def cluster_with_replicas() -> Iterator[OwnedRedisCluster]:
    cluster = OwnedRedisCluster(size=3, replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


async def test_invariants_hold_when_a_cluster_shard_master_fails_over(
    cluster_with_replicas: OwnedRedisCluster, key_prefix: str
) -> None:
    cluster = cluster_with_replicas
    # The master of the history channel's shard: its stream and its presence move over.
    doomed = _master_of(cluster, RedisKeys(key_prefix).history(HIST))

    async def kill_the_master(rig: Rig) -> None:
        promoted = await asyncio.to_thread(cluster.kill_master, doomed)
        print(f"\n{doomed.address} killed; {promoted.address} promoted")

    admin = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        async with running_workers(cluster.url, key_prefix) as found:
            rig = Rig(found, admin, key_prefix)
            try:
                figures = await run_case(rig, Fault("cluster-master-failover", kill_the_master))
            finally:
                await rig.close()
    finally:
        await admin.aclose()
    check(figures)


@pytest.fixture
def sentinel_setup() -> Iterator[tuple[OwnedRedisServer, OwnedRedisServer, OwnedSentinel]]:
    """A primary, a replica of it, and a Sentinel watching them, all on loopback."""
    primary = OwnedRedisServer()
    primary.start()
    replica = OwnedRedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    sentinel = OwnedSentinel(primary_port=primary.port)
    sentinel.start()
    try:
        yield primary, replica, sentinel
    finally:
        sentinel.close()
        replica.close()
        primary.close()


SPLIT_BRAIN = (
    "SENTINEL FAILOVER leaves the old primary a primary until the Sentinel demotes it "
    "(seconds later); a worker whose pooled connections still reach it has its publishes "
    "acknowledged there and lost when it resyncs (Redis replication is asynchronous). The "
    "workers notice only as deaf probes and renew the link, not the command connections. "
    "Seen in about 1 run in 4."
)


@pytest.mark.parametrize(
    "how",
    [
        "primary-killed",
        pytest.param("sentinel-failover", marks=pytest.mark.xfail(reason=SPLIT_BRAIN)),
    ],
)
async def test_invariants_hold_across_a_sentinel_failover_under_load(
    how: str,
    sentinel_setup: tuple[OwnedRedisServer, OwnedRedisServer, OwnedSentinel],
    key_prefix: str,
) -> None:
    primary, replica, sentinel = sentinel_setup
    watcher = aioredis.Redis.from_url(f"redis://127.0.0.1:{sentinel.port}/0")
    old = aioredis.Redis.from_url(primary.url)

    async def replica_known() -> bool:
        replicas = await watcher.sentinel_slaves(sentinel.service)
        return any(r.get("master-link-status") == "ok" for r in replicas)

    async def replica_promoted() -> bool:
        address = await watcher.sentinel_get_master_addr_by_name(sentinel.service)
        return address is not None and int(address[1]) == replica.port

    async def old_primary_demoted() -> bool:
        # Until the Sentinel turns the old primary into a replica (it may take seconds),
        # workers still writing to it lose those writes when it resyncs: the fault lasts.
        try:
            role = await old.execute_command("ROLE")
        except aioredis.ConnectionError:
            return False  # the Sentinel closes clients of the old primary as it demotes it
        return bool(role[0] == b"slave" and role[3] == b"connected")

    async def failover(rig: Rig) -> None:
        if how == "primary-killed":
            await asyncio.to_thread(primary.stop)  # kill -9; the Sentinel fails over
            await wait_until_async(replica_promoted, 20)
            return
        await watcher.execute_command("SENTINEL", "FAILOVER", sentinel.service)
        await wait_until_async(replica_promoted, 20)
        await wait_until_async(old_primary_demoted, 20)

    await wait_until_async(replica_known, 20)
    sentinels = Sentinel([("127.0.0.1", sentinel.port)])
    admin = sentinels.master_for(sentinel.service)
    try:
        async with running_workers(sentinel.url, key_prefix) as found:
            rig = Rig(found, admin, key_prefix)
            try:
                figures = await run_case(rig, Fault(how, failover))
            finally:
                await rig.close()
    finally:
        await admin.aclose(close_connection_pool=True)
        for client in [*sentinels.sentinels, watcher, old]:
            await client.aclose()
    check(figures)
