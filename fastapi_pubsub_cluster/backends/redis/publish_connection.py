"""The publish path's own Redis connection, for a PUBLISH that has nobody to pipeline with."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from ...errors import PublishError


class PublishConnection:
    """One persistent redis-py connection, built as ``client``'s pool builds its own (same
    address, TLS, credentials, client name, connect timeout and retry policy) but not
    part of the pool.

    A lone caller publishing in sequence sends each PUBLISH here, and so pays neither a
    pool checkout (with its liveness check) and release nor the client's per-command
    bookkeeping. The connection opens on first use and, when Redis dropped it (killed,
    restarted), reconnects through redis-py's retry: a retried PUBLISH is harmless, as
    receivers drop a publication id they have seen.

    It has no socket timeout: callers bound each :meth:`publish` with their own time
    limit (a cancelled command closes the connection, and the next one reopens it).
    That spares redis-py's task per write and timer per read, a third of the cost of a
    publish. Only one caller at a time may use it.
    """

    __slots__ = ("_closed", "_connection", "_pool")

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool
        self._connection: AbstractConnection | None = None
        self._closed = False

    async def publish(self, topic: str, data: bytes) -> int:
        """PUBLISH ``data`` on ``topic``; how many subscribers got it. Raises redis-py's
        errors once its retries are spent, or PublishError after :meth:`aclose`."""
        connection = self._connection
        if connection is None:
            if self._closed:
                raise PublishError("the publish path is closed")
            pool = self._pool
            options = {**pool.connection_kwargs, "socket_timeout": None}
            connection = self._connection = pool.connection_class(**options)
        command = connection.pack_command("PUBLISH", topic, data)

        async def attempt() -> int:
            if self._closed:  # closed during a retry: do not open it again
                raise PublishError("the publish path is closed")
            # Connects first if it is not connected (a new or a dropped connection).
            await connection.send_packed_command(command)
            return int(await connection.read_response())

        async def dropped(_: Exception) -> None:
            await connection.disconnect()  # the next attempt opens it again

        return await connection.retry.call_with_retry(attempt, dropped)

    async def aclose(self) -> None:
        """Close the connection; publishing here fails from now on."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()
