"""One local client socket with a bounded outbox, so fan-out never waits for a slow client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from .codec import OutgoingFrame, stream_id_order, websocket_frame
from .errors import CloseCode
from .settings import SlowClientPolicy, WireFormat

if TYPE_CHECKING:
    from .uvicorn_ws import DirectWriter

#: Key of the direct writer in the ASGI scope's ``extensions`` (see ``uvicorn_ws``).
DIRECT_WRITE_EXTENSION = "fastapi_pubsub_cluster.direct_write"

logger = logging.getLogger("fastapi_pubsub_cluster")

Generator = Callable[[], Awaitable[Any]]


class ClientConnection:
    """A websocket held by this worker, as the connection manager sees it.

    Fan-out calls :meth:`offer`, which never awaits. The frame is written at once when the
    socket takes it without waiting; otherwise it goes into a bounded outbox that a writer
    task (created on first need) drains. When the outbox is full the slow-client policy
    applies to this client alone.
    """

    __slots__ = (
        "_close_timeout",
        "_closing",
        "_direct",
        "_held",
        "_outbox",
        "_overflowed",
        "_policy",
        "_queue_size",
        "_ready",
        "_replay",
        "_suspended",
        "_writer",
        "_writing",
        "channel",
        "dropped_messages",
        "generate",
        "id",
        "on_dropped",
        "on_evicted",
        "on_reconnect",
        "resume_from",
        "websocket",
        "wire_format",
    )

    def __init__(
        self,
        websocket: WebSocket,
        channel: str,
        connection_id: str,
        *,
        wire_format: WireFormat = "json",
        queue_size: int = 512,
        slow_client_policy: SlowClientPolicy = "disconnect",
        close_timeout: float = 5.0,
        generate: Generator | None = None,
    ) -> None:
        self.websocket = websocket
        self.channel = channel
        self.id = connection_id
        self.wire_format = wire_format
        #: The owning socket's ``generate_object_to_send``, run once per membership event.
        self.generate = generate
        self.dropped_messages = 0
        #: Stream id the client asked to resume after (``?since=``), on channels with history.
        self.resume_from: str | None = None
        self._held: list[OutgoingFrame] | None = None
        # Set when served by PubSubWebSocketProtocol: frames built once per broadcast.
        self._direct: DirectWriter | None = (websocket.scope.get("extensions") or {}).get(
            DIRECT_WRITE_EXTENSION
        )
        self._replay: tuple[list[OutgoingFrame], str | None] | None = None
        #: The owning socket's ``on_reconnect``, called after the Redis link came back.
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        #: Set by the manager: called each time the drop_oldest policy discards a message.
        self.on_dropped: Callable[[], None] | None = None
        #: Set by the manager: called once when the client is dropped for falling behind.
        self.on_evicted: Callable[[ClientConnection], None] | None = None
        self._queue_size = queue_size
        self._policy = slow_client_policy
        self._close_timeout = close_timeout
        # Created on first need, as is the writer: most clients never fall behind, and
        # idle connections are what a worker holds by the thousand.
        self._outbox: deque[str | bytes] | None = None
        self._ready: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # A send started in the caller's task that had to wait, and what it waits on.
        self._suspended: tuple[Coroutine[Any, Any, None], Any] | None = None
        self._writing = False
        self._closing = False
        self._overflowed = False

    @property
    def overflowed(self) -> bool:
        """True once the client was disconnected for falling behind."""
        return self._overflowed

    @property
    def pending(self) -> int:
        """Frames waiting in the outbox."""
        return len(self._outbox or ())

    def offer(self, frame: OutgoingFrame) -> bool:
        """Queue ``frame`` for this client without waiting; False if it was not queued.

        Raises :class:`~fastapi_pubsub_cluster.errors.MalformedMessageError` when the payload
        cannot be encoded in this client's wire format.
        """
        if self._closing:
            return False
        if self._held is not None:
            # Replaying history: live messages wait, so that none overtakes the replay.
            if len(self._held) >= self._queue_size:
                self._on_overflow()
                return False
            self._held.append(frame)
            return True
        return self._push(frame, bounded=True)

    @property
    def holding(self) -> bool:
        """True between :meth:`hold_live_messages` and :meth:`release`."""
        return self._held is not None

    def hold_live_messages(self) -> None:
        """Keep messages aside until :meth:`release`: call it before joining, so that a
        client accepted after joining misses nothing, and a replay goes first."""
        self._held = []

    def set_replay(self, replayed: list[OutgoingFrame], last_id: str | None) -> None:
        """What :meth:`release` sends before the held live messages, and the stream id up to
        which held messages are already part of it."""
        self._replay = (replayed, last_id)

    def release(self) -> None:
        """Queue the replay in order, then the held live messages that are newer."""
        held, self._held = self._held or [], None
        replayed, last_id = self._replay or ([], None)
        self._replay = None
        if self._closing:
            return
        for frame in replayed:
            self._push(frame, bounded=False)  # history is bounded by history_size itself
        cutoff = stream_id_order(last_id) if last_id is not None else None
        for frame in held:
            if (
                cutoff is not None
                and frame.stream_id is not None
                and stream_id_order(frame.stream_id) <= cutoff
            ):
                continue  # already part of the replay
            if not self.offer(frame):
                return

    def _push(self, frame: OutgoingFrame, *, bounded: bool) -> bool:
        data: str | bytes = frame.text if self.wire_format == "json" else frame.binary
        if not self._outbox and self._suspended is None and not self._writing:
            direct = self._direct
            if direct is not None and direct.try_write(
                websocket_frame(frame, text=self.wire_format == "json")
            ):
                return True
            return self._send_now(data)
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        if bounded and len(outbox) >= self._queue_size:
            if self._policy == "drop_oldest":
                outbox.popleft()
                self.dropped_messages += 1
                if self.on_dropped is not None:
                    self.on_dropped()
            else:
                self._on_overflow()
                return False
        outbox.append(data)
        self._wake_writer()
        return True

    def _send_now(self, data: str | bytes) -> bool:
        """Start the send at once, in the caller's task.

        A server's ASGI send normally completes without waiting (the socket's write buffer
        takes the frame), so most deliveries cost no task switch. When it does have to wait
        (the client is not reading fast enough), the suspended send is handed to this
        client's writer task, and later frames queue behind it in the bounded outbox.
        """
        send = self._send_coroutine(data)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            return True
        except Exception as exc:  # the client vanished, or the socket is closing
            self._lost(exc)
            return False
        self._suspended = (send, waiting_on)
        self._wake_writer()
        return True

    def _send_coroutine(self, data: str | bytes) -> Coroutine[Any, Any, None]:
        if isinstance(data, str):
            return self.websocket.send_text(data)
        return self.websocket.send_bytes(data)

    def _wake_writer(self) -> None:
        if self._ready is None:
            self._ready = asyncio.Event()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_until_closed(), name=f"pubsub-writer-{self.id}"
            )
        self._ready.set()

    def _lost(self, exc: BaseException) -> None:
        logger.debug("send to %s failed: %r", self.id, exc)
        self._closing = True
        self._outbox = None

    async def stop_writer(self) -> None:
        """Stop queuing, cancel the writer and wait for it."""
        self._closing = True
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._suspended is not None:  # the writer never got to run
            self._suspended[0].close()
            self._suspended = None

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket with ``code``, waiting at most ``close_timeout`` for the client."""
        self._closing = True
        self._outbox = None
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        try:
            await asyncio.wait_for(self.websocket.close(code, reason), self._close_timeout)
        except (TimeoutError, RuntimeError, OSError) as exc:
            # Already closed by the peer, or it stopped reading even the close frame.
            logger.debug("close(%s) of %s did not complete: %r", code, self.id, exc)

    def _on_overflow(self) -> None:
        logger.warning(
            "client %s on channel %r fell %d messages behind; disconnecting it (%d)",
            self.id,
            self.channel,
            self._queue_size,
            CloseCode.POLICY_VIOLATION,
        )
        self._overflowed = True
        self._closing = True
        self._outbox = None
        if self.on_evicted is not None:
            self.on_evicted(self)
        # The writer is blocked in a send that the client does not read: interrupt it.
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    async def _write_until_closed(self) -> None:
        try:
            await self._drain_forever()
        except asyncio.CancelledError:
            if not self._overflowed:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:  # the client vanished mid-send
            self._lost(exc)
            return
        await self.close(CloseCode.POLICY_VIOLATION, "client too slow")

    async def _drain_forever(self) -> None:
        ready = self._ready
        assert ready is not None  # created before the writer
        while True:
            await ready.wait()
            ready.clear()
            self._writing = True
            try:
                if self._suspended is not None:
                    await self._finish_suspended()
                while self._outbox:
                    await self._send_coroutine(self._outbox.popleft())
            finally:
                self._writing = False

    async def _finish_suspended(self) -> None:
        """Drive the send that :meth:`_send_now` started to its end."""
        assert self._suspended is not None
        send, waiting_on = self._suspended
        try:
            while True:
                if waiting_on is None:
                    await asyncio.sleep(0)  # a bare yield: just let the loop run
                else:
                    await asyncio.wait((waiting_on,))
                waiting_on = send.send(None)
        except StopIteration:
            pass
        except BaseException:
            send.close()
            raise
        finally:
            self._suspended = None
