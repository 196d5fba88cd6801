"""A loopback TCP proxy in front of Redis that can make pub/sub connections deaf, stall every
connection, or drop them all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class DeafeningProxy:
    """Forwards bytes both ways; :meth:`deafen_subscribers` silently drops everything Redis
    sends to the connections that have subscribed so far, while they stay open — the
    half-dead link that a network partition or a stuck middlebox leaves behind.

    :meth:`stall` holds every byte in both directions (connections stay open, new ones are
    accepted and held too) until :meth:`flow`; :meth:`drop` resets every connection open now,
    as a middlebox that forgets its flows would."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._subscribers: set[asyncio.StreamWriter] = set()
        self._deaf: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    def stall(self) -> None:
        """Forward nothing either way until :meth:`flow`; connections stay open."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again, the held bytes first."""
        self._flowing.set()

    def drop(self) -> int:
        """Reset every connection open now (both sides); returns how many there were."""
        dropped = list(self._open)
        for writer in dropped:
            writer.transport.abort()
        return len(dropped) // 2

    def deafen_subscribers(self) -> int:
        """Make current subscriber connections deaf; returns how many there were."""
        self._deaf |= self._subscribers
        return len(self._subscribers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._open.update((writer, up_writer))

        async def client_to_redis() -> None:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if b"SUBSCRIBE" in data.upper():
                    self._subscribers.add(writer)
                up_writer.write(data)
                await up_writer.drain()

        async def redis_to_client() -> None:
            while data := await up_reader.read(65536):
                await self._flowing.wait()
                if writer in self._deaf:
                    continue
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.create_task(client_to_redis()), asyncio.create_task(redis_to_client())]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._pumps.discard(pump)
            await asyncio.gather(*pumps, return_exceptions=True)
            self._subscribers.discard(writer)
            self._deaf.discard(writer)
            self._open.difference_update((writer, up_writer))
            for w in (writer, up_writer):
                w.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DeafeningProxy]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for pump in list(self._pumps):
                pump.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
