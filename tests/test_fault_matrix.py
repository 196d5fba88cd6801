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
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.cluster import RedisCluster as SyncRedisCluster

from fastapi_pubsub_cluster.backends.redis import RedisKeys
from tests.fault_cases import FAULTS, rig_on
from tests.fault_workload import (
    BEAT,
    HIST,
    Fault,
    Figures,
    Rig,
    run_case,
    running_workers,
)
from tests.live import wait_for_async_condition
from tools.redis_servers import OwnedRedisCluster, OwnedRedisServer, OwnedSentinel

pytestmark = pytest.mark.slow


def check(figures: Figures, loses_data: bool = False) -> None:
    print(f"\n{figures.line()}")
    assert figures.problems == []
    if not loses_data:  # Redis kept what it stored: nothing may be reported lost
        assert figures.gaps == 0
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
    check(figures, fault.loses_data)


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


#: SENTINEL FAILOVER leaves the old primary a primary until the Sentinel demotes it (seconds
#: later): publishes it acknowledged meanwhile are lost when it resyncs (replication is
#: asynchronous), unless a publish waits for a replica (history_min_replicas), which the
#: promoted replica no longer is. A killed primary takes no writes: nothing to wait for
#: (and no replica left to confirm them once it is gone).
MIN_REPLICAS = {"primary-killed": "0", "sentinel-failover": "1"}


@pytest.mark.parametrize("how", ["primary-killed", "sentinel-failover"])
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
            await wait_for_async_condition(replica_promoted, 20)
            return
        await watcher.execute_command("SENTINEL", "FAILOVER", sentinel.service)
        await wait_for_async_condition(replica_promoted, 20)
        await wait_for_async_condition(old_primary_demoted, 20)

    await wait_for_async_condition(replica_known, 20)
    sentinels = Sentinel([("127.0.0.1", sentinel.port)])
    admin = sentinels.master_for(sentinel.service)
    try:
        replicas = {"PUBSUB_HISTORY_MIN_REPLICAS": MIN_REPLICAS[how]}
        async with running_workers(sentinel.url, key_prefix, **replicas) as found:
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
