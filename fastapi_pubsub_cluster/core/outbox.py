"""The write side of one client socket: frames written at once when the socket takes them
without waiting, else queued in a bounded outbox that a writer task drains; the slow-client
policy when it is full; and a close that a client which stopped reading cannot hold up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..errors import CloseCode
from ..frames import OutgoingFrame
from ..settings import PubSubSettings
from .lifecycle import ConnectionState, OutboxConnection
from .sends import (
    SuspendedSend,
    finish_send,
    server_send,
    start_send,
    task_started,
    warn_cannot_abort,
)
from .sockets import DIRECT_WRITE_EXTENSION, DirectWriter

logger = logging.getLogger("fastapi_pubsub_cluster")


class _StateSlot:
    """A queued state frame (a count, a presence event): a newer one of the same state
    takes its place instead of queueing behind it."""

    __slots__ = ("message", "state")

    def __init__(self, state: str, message: dict[str, Any]) -> None:
        self.state = state
        self.message = message


class Outbox:
    """How one connection's frames reach its socket, in order, without fan-out waiting.

    :meth:`push` never awaits. The frame is written at once when the socket takes it
    without waiting; otherwise it goes into a bounded outbox that a writer task (created on
    first need) drains. When the outbox is full the slow-client policy applies to this
    client alone. The connection's :class:`ConnectionState` says whether it still writes.
    """

    __slots__ = (
        "_connection",
        "_direct",
        "_messages",
        "_ready",
        "_send",
        "_settings",
        "_states",
        "_suspended",
        "_text",
        "_websocket",
        "_writer",
        "_writing",
        "dropped",
    )

    def __init__(self, connection: OutboxConnection, *, settings: PubSubSettings) -> None:
        websocket = connection.websocket
        self._connection = connection
        self._websocket = websocket
        self._send = server_send(websocket)
        self._settings = settings
        self._text = connection.wire_format == "json"
        #: Messages dropped for falling behind (``drop_oldest`` policy).
        self.dropped = 0
        self._direct: DirectWriter | None = (websocket.scope.get("extensions") or {}).get(
            DIRECT_WRITE_EXTENSION
        )
        if self._direct is not None:
            # Before the handshake, so that it holds from the first frame: a few KB of
            # deflate cannot make the worker inflate up to the server's own, larger limit.
            self._direct.limit_inbound(settings.max_message_bytes)
        # Created on first need, as is the writer: most clients never fall behind, and
        # idle connections are what a worker holds by the thousand.
        self._messages: deque[dict[str, Any] | _StateSlot] | None = None
        self._states: dict[str, _StateSlot] = {}  # the state frames queued, by state
        self._ready: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # A send started in the caller's task that had to wait, and what it waits on.
        self._suspended: SuspendedSend | None = None
        self._writing = False

    @property
    def has_direct_path(self) -> bool:
        """True when the server integration can write broadcasts' frames straight to it."""
        return self._direct is not None

    @property
    def frames_written_directly(self) -> int:
        """Frames written by the server integration's direct path (0 without one)."""
        return self._direct.frames_written if self._direct is not None else 0

    def push(self, frame: OutgoingFrame, *, bounded: bool) -> bool:
        """Write ``frame`` now or queue it behind those waiting; False if it was not taken
        (the client is gone, or was evicted by this frame). ``bounded=False`` skips the
        slow-client policy (a replay, bounded by ``history_size`` itself)."""
        text = self._text
        if not self._messages and self._suspended is None and not self._writing:
            direct = self._direct
            if direct is not None and direct.try_write(frame, text=text):
                return True
            return self._send_now(frame.asgi_message(text))
        message = frame.asgi_message(text)
        messages = self._messages
        if messages is None:
            messages = self._messages = deque()
        states = self._states
        if frame.state is not None:
            # State, not an event: only the newest pending one matters, and it never
            # counts against the client (a storm's counts are not a slow client's backlog).
            slot = states.get(frame.state)
            if slot is not None:
                slot.message = message
                return True
            slot = states[frame.state] = _StateSlot(frame.state, message)
            messages.append(slot)
            self.wake_writer()
            return True
        if bounded and len(messages) - len(states) >= self._settings.send_queue_size:
            if self._settings.slow_client_policy == "drop_oldest":
                self._next(messages)
                self.dropped += 1
                self._connection.lost_oldest()
            else:
                self.evict()
                return False
        messages.append(message)
        self.wake_writer()
        return True

    def _next(self, messages: deque[dict[str, Any] | _StateSlot]) -> dict[str, Any]:
        """Take the oldest queued message."""
        item = messages.popleft()
        if isinstance(item, _StateSlot):
            self._states.pop(item.state, None)
            return item.message
        return item

    def _send_now(self, message: dict[str, Any]) -> bool:
        """Start the send at once, in the caller's task.

        A server's ASGI send normally completes without waiting (the socket's write buffer
        takes the frame), so most deliveries cost no task switch. When it does have to wait
        (the client is not reading fast enough), the suspended send is handed to this
        client's writer task, and later frames queue behind it in the bounded outbox.
        """
        try:
            # The ASGI message goes to the server's send itself: no send_text wrapper, and the
            # message is the frame's own, shared by all its sockets.
            suspended = start_send(self._send(message))
        except Exception as exc:  # the client vanished, or the socket is closing
            self._lost(exc)
            return False
        if suspended is not None:
            self._suspended = suspended
            self.wake_writer()
        return True

    def wake_writer(self) -> None:
        """Have the writer task (created now if need be) write what waits, or close."""
        if self._ready is None:
            self._ready = asyncio.Event()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_until_closed(), name=f"pubsub-writer-{self._connection.id}"
            )
        self._ready.set()

    def _lost(self, exc: BaseException) -> None:
        logger.debug("send to %s failed: %r", self._connection.id, exc)
        self._connection.mark_lost()
        self._messages = None
        self._states.clear()

    def evict(self) -> None:
        """Disconnect the client for falling behind: unregistered at once, closed with 1008
        by the writer task (after the handshake, if it is not complete yet)."""
        connection = self._connection
        logger.warning(
            "client %s on channel %r fell %d messages behind; disconnecting it (%d)",
            connection.id,
            connection.channel,
            self._settings.send_queue_size,
            CloseCode.POLICY_VIOLATION,
        )
        holding = connection.state is ConnectionState.HOLDING
        connection.mark_evicted()
        self._messages = None
        self._states.clear()
        connection.fell_behind()
        writer = self._writer
        if writer is not None and not writer.done() and task_started(writer):
            # Blocked in a send that the client does not read: interrupt it, then close.
            writer.cancel()
        elif not holding or writer is not None:
            # The writer task closes the socket (after release if held). One created in
            # this same burst has not run yet: cancelled now, it would never close it.
            self.wake_writer()

    async def stop_writer(self) -> None:
        """Take nothing more, cancel the writer and wait for it."""
        self._connection.mark_closed()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._drop_suspended()  # the writer never got to run

    def _drop_suspended(self) -> None:
        """Close the send the writer was to finish, if any: it will not be finished."""
        if self._suspended is not None:
            self._suspended[0].close()
            self._suspended = None

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket with ``code`` within ``close_timeout``: with a close frame when
        it can be written, else by aborting the connection (a client that stopped reading
        leaves the server's buffers full, and a close frame would wait behind them)."""
        connection = self._connection
        connection.mark_closed()
        self._messages = None
        self._states.clear()
        websocket = self._websocket
        if websocket.application_state != WebSocketState.CONNECTED:
            return
        try:
            await asyncio.wait_for(websocket.close(code, reason), self._settings.close_timeout)
        except TimeoutError:  # before OSError, of which it is a subclass
            self._abort(code)
        except (RuntimeError, OSError, WebSocketDisconnect) as exc:  # closed by the peer
            logger.debug("close(%s) of %s did not complete: %r", code, connection.id, exc)

    def _abort(self, code: int) -> None:
        connection_id = self._connection.id
        if self._direct is not None:
            logger.info(
                "client %s did not take its close frame (%d); connection aborted",
                connection_id,
                code,
            )
            self._direct.abort()
        else:
            warn_cannot_abort(connection_id, code)

    async def _write_until_closed(self) -> None:
        try:
            await self._drain_forever()
        except asyncio.CancelledError:
            if self._connection.state is not ConnectionState.EVICTED:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:  # the client vanished mid-send
            self._lost(exc)
            return
        self._drop_suspended()  # evicted before this task could finish that send
        await self.close(CloseCode.POLICY_VIOLATION, "client too slow")

    async def _drain_forever(self) -> None:
        ready = self._ready
        assert ready is not None  # created before the writer
        connection = self._connection
        while connection.state is not ConnectionState.EVICTED:
            await ready.wait()
            ready.clear()
            self._writing = True
            try:
                suspended = self._suspended
                if suspended is not None:
                    try:
                        await finish_send(suspended)
                    finally:
                        self._suspended = None
                while self._messages:
                    await self._send(self._next(self._messages))
            finally:
                self._writing = False
