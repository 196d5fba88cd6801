"""Clients whose callers wait for a free connection, on a Redis Cluster and through Sentinel.

redis-py's asyncio ``RedisCluster`` and its Sentinel pool bound their connections and fail a
command with ``MaxConnectionsError`` when a burst needs more at once (a few hundred sockets
joining together), where the single-Redis client's blocking pool makes callers wait. These
make them wait too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool


class WaitingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool of connections to the current primary, blocking like
    ``BlockingConnectionPool``: a caller waits up to ``timeout`` for a free connection."""


class WaitingRedisCluster(RedisCluster):
    """``RedisCluster`` with at most ``max_connections`` commands or pipelines in flight,
    so that no node ever needs more connections than its pool holds."""

    def __init__(self, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self.callers = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.callers:
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does


class _WaitingPipeline(ClusterPipeline):
    """A pipeline that takes one of its client's turns while it executes."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, WaitingRedisCluster)
        async with client.callers:
            return await super().execute(raise_on_error, allow_redirections)
