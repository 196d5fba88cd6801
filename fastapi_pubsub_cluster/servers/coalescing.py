"""Fewer write syscalls: a socket's direct frames of one loop iteration go out in one write.

When the worker is busy, one wake-up of its Redis link dispatches many messages, and a
socket in several of them would cost one ``send`` syscall per frame. Instead, the direct
path queues its frames on the socket's :class:`OrderedTransport`; once per loop iteration
:class:`IterationFlush` writes each socket's frames with one ``writelines``. Everything else
the protocol writes (ASGI sends, pongs, close frames) goes through the same transport, which
writes the queued frames first, so that no frame overtakes another.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Bytes a socket's frames may wait for the end of the iteration; beyond, they are written
#: at once, so that the transport sees them and applies backpressure (uvicorn's write
#: buffer high-water mark, the default of asyncio and uvloop).
MAX_QUEUED_BYTES = 64 * 1024


class IterationFlush:
    """The transports of one event loop with frames queued in this iteration."""

    __slots__ = ("__weakref__", "_loop", "_queued")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queued: list[OrderedTransport] = []

    def add(self, transport: OrderedTransport) -> None:
        """Flush ``transport`` at the end of this iteration (scheduled once for all)."""
        if not self._queued:
            self._loop.call_soon(self._flush)
        self._queued.append(transport)

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        for transport in queued:
            try:
                transport.flush()
            except Exception as exc:  # one lost connection never stops the others
                logger.debug("flush of a coalesced write failed: %r", exc)


_flushes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IterationFlush] = (
    weakref.WeakKeyDictionary()
)


def iteration_flush() -> IterationFlush:
    """The running loop's :class:`IterationFlush`."""
    loop = asyncio.get_running_loop()
    flush = _flushes.get(loop)
    if flush is None:
        flush = _flushes[loop] = IterationFlush(loop)
    return flush


class OrderedTransport(asyncio.Transport):
    """A connection's transport, with direct frames queued until the end of the iteration.

    Writes from anywhere else first write what is queued, in order; ``close`` does too, and
    ``abort`` drops it. Everything else is the wrapped transport's.
    """

    __slots__ = ("_flush", "_queued", "_queued_bytes", "wrapped")

    def __init__(self, wrapped: asyncio.Transport, flush: IterationFlush) -> None:
        super().__init__()
        self.wrapped = wrapped
        self._flush = flush
        self._queued: list[bytes] | None = None
        self._queued_bytes = 0

    def queue(self, data: bytes) -> None:
        """Write ``data`` at the end of this loop iteration (or before any other write, or
        at once when :data:`MAX_QUEUED_BYTES` wait)."""
        queued = self._queued
        if queued is None:
            self._queued = [data]
            self._queued_bytes = len(data)
            self._flush.add(self)
        else:
            queued.append(data)
            self._queued_bytes += len(data)
        if self._queued_bytes >= MAX_QUEUED_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is queued, in one call, unless the connection is closing."""
        queued, self._queued = self._queued, None
        self._queued_bytes = 0
        if queued and not self.wrapped.is_closing():
            if len(queued) == 1:
                self.wrapped.write(queued[0])
            else:
                self.wrapped.writelines(queued)

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if self._queued:
            self.flush()
        self.wrapped.write(data)

    def writelines(self, list_of_data: Any) -> None:
        if self._queued:
            self.flush()
        self.wrapped.writelines(list_of_data)

    def close(self) -> None:
        if self._queued:
            self.flush()
        self.wrapped.close()

    def abort(self) -> None:
        self._queued = None
        self.wrapped.abort()

    def is_closing(self) -> bool:
        return self.wrapped.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.wrapped.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.wrapped.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.wrapped.get_protocol()

    def pause_reading(self) -> None:
        self.wrapped.pause_reading()

    def resume_reading(self) -> None:
        self.wrapped.resume_reading()

    def is_reading(self) -> bool:
        return self.wrapped.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.wrapped.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.wrapped.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.wrapped.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self.wrapped.can_write_eof()

    def write_eof(self) -> None:
        if self._queued:
            self.flush()
        self.wrapped.write_eof()
