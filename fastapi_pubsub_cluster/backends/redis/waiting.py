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
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool


class WaitingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool of connections to the current primary, blocking like
    ``BlockingConnectionPool``: a caller waits up to ``timeout`` for a free connection.

    It keeps every connection on the primary the Sentinel named last. redis-py's pool asks
    the Sentinel only when it opens a connection, and then closes only the idle ones: the
    connections in use at that moment came back still connected to the old primary (which
    stays a primary until the Sentinel demotes it) and served commands there, for good.
    Here a connection released while connected elsewhere is closed (its next command
    reconnects through the Sentinel), and :meth:`rediscover_primary` asks the Sentinel now.
    """

    async def release(self, connection: AbstractConnection) -> None:
        try:
            if self._elsewhere(connection):
                await connection.disconnect()
        finally:
            await super().release(connection)

    def _elsewhere(self, connection: AbstractConnection) -> bool:
        primary = self.master_address
        address = (getattr(connection, "host", None), getattr(connection, "port", None))
        return bool(self.is_master and primary is not None and address != tuple(primary))

    async def rediscover_primary(self) -> None:
        """Ask the Sentinel for the primary now: when it changed, idle connections close at
        once and those in use as they come back."""
        await self.get_master_address()  # type: ignore[no-untyped-call]


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
