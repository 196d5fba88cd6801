"""One local client socket with a bounded outbox, so fan-out never waits for a slow client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from enum import Enum
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..codec import OutgoingFrame
from ..errors import CloseCode
from ..settings import PubSubSettings, WireFormat
from .flow import ChannelFlow
from .sends import (
    SuspendedSend,
    finish_send,
    server_send,
    start_send,
    task_started,
    warn_cannot_abort,
)
from .sockets import DIRECT_WRITE_EXTENSION, DirectWriter, SocketHooks

logger = logging.getLogger("fastapi_pubsub_cluster")


class ConnectionOwner(Protocol):
    """What a connection tells the core that registered it."""

    def connection_evicted(self, connection: ClientConnection) -> None:
        """``connection`` fell behind and is being closed: unregister it at once."""

    def message_dropped(self, connection: ClientConnection) -> None:
        """``connection`` lost its oldest queued message (``drop_oldest`` policy)."""


class ConnectionState(Enum):
    """Where a connection is in its life, as the core sees it."""

    HOLDING = "holding"  # registered; messages kept aside until the handshake completes
    OPEN = "open"  # messages flow
    EVICTED = "evicted"  # fell behind; being closed with 1008
    CLOSED = "closed"  # closing, closed or lost: takes nothing more


class ClientConnection:
    """A websocket held by this worker, as the core sees it.

    Fan-out calls :meth:`offer`, which never awaits. The frame is written at once when the
    socket takes it without waiting; otherwise it goes into a bounded outbox that a writer
    task (created on first need) drains. When the outbox is full the slow-client policy
    applies to this client alone.
    """

    __slots__ = (
        "_direct",
        "_extra",
        "_outbox",
        "_own",
        "_owner",
        "_ready",
        "_send",
        "_settings",
        "_suspended",
        "_writer",
        "_writing",
        "channel",
        "dropped_messages",
        "hooks",
        "id",
        "metadata",
        "resume_from",
        "state",
        "tagged",
        "user_id",
        "websocket",
        "wire_format",
    )

    def __init__(
        self,
        websocket: WebSocket,
        channel: str,
        connection_id: str,
        *,
        owner: ConnectionOwner,
        hooks: SocketHooks,
        settings: PubSubSettings,
        wire_format: WireFormat,
        resume_from: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tagged: bool = False,
    ) -> None:
        self.websocket = websocket
        self._send = server_send(websocket)
        self.channel = channel
        self.id = connection_id
        #: The user this connection belongs to (``send_to_user``), if the socket said.
        self.user_id = user_id
        #: Small JSON-serialisable presence metadata, if the socket gave any.
        self.metadata = metadata
        self.hooks = hooks
        self.wire_format = wire_format
        #: Stream id the client asked to resume after (``?since=``), on channels with history.
        self.resume_from = resume_from
        #: True when every channel frame says its channel (``frames=tagged``); frames of
        #: further channels always do.
        self.tagged = tagged
        self.dropped_messages = 0
        # Further channels joined at runtime; None until the first (most sockets have none).
        self._extra: dict[str, ChannelFlow] | None = None
        # Registered before the handshake completes: live messages wait until release().
        self.state = ConnectionState.HOLDING
        self._owner = owner
        self._settings = settings
        self._own = ChannelFlow()  # its own channel: held until the handshake completes
        self._direct: DirectWriter | None = (websocket.scope.get("extensions") or {}).get(
            DIRECT_WRITE_EXTENSION
        )
        if self._direct is not None:
            # Before the handshake, so that it holds from the first frame: a few KB of
            # deflate cannot make the worker inflate up to the server's own, larger limit.
            self._direct.limit_inbound(settings.max_message_bytes)
        # Created on first need, as is the writer: most clients never fall behind, and
        # idle connections are what a worker holds by the thousand.
        self._outbox: deque[dict[str, Any]] | None = None
        self._ready: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # A send started in the caller's task that had to wait, and what it waits on.
        self._suspended: SuspendedSend | None = None
        self._writing = False

    @property
    def evicted(self) -> bool:
        """True once the client was disconnected for falling behind."""
        return self.state is ConnectionState.EVICTED

    @property
    def has_direct_path(self) -> bool:
        """True when the server integration can write broadcasts' frames straight to it."""
        return self._direct is not None

    @property
    def frames_written_directly(self) -> int:
        """Frames written by the server integration's direct path (0 without one)."""
        return self._direct.frames_written if self._direct is not None else 0

    def offer(self, frame: OutgoingFrame) -> bool:
        """Queue ``frame`` for this client without waiting; False if it was not queued.

        Raises :class:`~fastapi_pubsub_cluster.errors.MalformedMessageError` when the payload
        cannot be encoded in this client's wire format.
        """
        state = self.state
        if state is ConnectionState.OPEN:
            own = self._own
            if own.replayed_to is not None and own.is_repeat(frame):
                return False  # part of this client's replay already
            return self._push(frame, bounded=True)
        if state is ConnectionState.HOLDING:
            # Before the handshake or a replay: live messages wait, none may overtake.
            if self._own.hold(frame, self._settings.send_queue_size):
                return True
            self._evict()
        return False

    @property
    def channels(self) -> list[str]:
        """Every channel this connection is in: its own first, then further ones."""
        extra = self._extra
        return [self.channel, *extra] if extra else [self.channel]

    def in_channel(self, channel: str) -> bool:
        """True if this connection is in ``channel`` (its own or a further one)."""
        return channel == self.channel or (self._extra is not None and channel in self._extra)

    def offer_in(self, channel: str, frame: OutgoingFrame) -> bool:
        """:meth:`offer` a frame of ``channel``, tagged with its channel where the client
        expects that, and held while the channel's join is not complete."""
        if channel == self.channel:
            return self.offer(frame.tagged(channel) if self.tagged else frame)
        flow = self._extra.get(channel) if self._extra is not None else None
        if flow is None or self.state is not ConnectionState.OPEN:
            return False
        frame = frame.tagged(channel)
        if flow.held is not None:
            if flow.hold(frame, self._settings.send_queue_size):
                return True
            self._evict()
            return False
        if flow.is_repeat(frame):
            return False
        return self._push(frame, bounded=True)

    def send_event(self, frame: OutgoingFrame) -> bool:
        """Queue a control frame (e.g. ``joined``) behind what was queued before it."""
        if self.state is not ConnectionState.OPEN:
            return False
        return self._push(frame, bounded=True)

    def add_channel(self, channel: str) -> None:
        """Be in ``channel`` too; its messages are held until :meth:`release_channel`."""
        if self._extra is None:
            self._extra = {}
        self._extra[channel] = ChannelFlow()

    def release_channel(
        self, channel: str, first: list[OutgoingFrame], replayed_to: str | None
    ) -> None:
        """Send ``first`` (the ``joined`` event, then the channel's replay up to stream id
        ``replayed_to``), then the messages held meanwhile that are newer."""
        flow = self._extra.get(channel) if self._extra is not None else None
        if flow is None or flow.held is None or self.state is not ConnectionState.OPEN:
            return
        flow.replay = (first, replayed_to)
        self._release(flow)

    def _release(self, flow: ChannelFlow) -> None:
        replayed, held = flow.release()
        for frame in replayed:
            self._push(frame, bounded=False)  # history is bounded by history_size itself
        for frame in held:
            if not self._push(frame, bounded=True):
                return

    def remove_channel(self, channel: str) -> bool:
        """Be no longer in further channel ``channel``; False if it was not one."""
        extra = self._extra
        if extra is None or extra.pop(channel, None) is None:
            return False
        if not extra:
            self._extra = None
        return True

    def set_replay(self, replayed: list[OutgoingFrame], last_id: str | None) -> None:
        """What :meth:`release` sends before the held live messages, and the stream id up to
        which held messages are already part of it."""
        self._own.replay = (replayed, last_id)

    def release(self) -> None:
        """Open the flow: the replay in order, then the held live messages that are newer."""
        if self.state is ConnectionState.EVICTED:
            self._wake_writer()  # fell behind before the handshake: the writer closes it
            return
        if self.state is not ConnectionState.HOLDING:
            return
        self.state = ConnectionState.OPEN
        self._release(self._own)

    def _push(self, frame: OutgoingFrame, *, bounded: bool) -> bool:
        text = self.wire_format == "json"
        if not self._outbox and self._suspended is None and not self._writing:
            direct = self._direct
            if direct is not None and direct.try_write(frame, text=text):
                return True
            return self._send_now(frame.asgi_message(text))
        message = frame.asgi_message(text)
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        if bounded and len(outbox) >= self._settings.send_queue_size:
            if self._settings.slow_client_policy == "drop_oldest":
                outbox.popleft()
                self.dropped_messages += 1
                self._owner.message_dropped(self)
            else:
                self._evict()
                return False
        outbox.append(message)
        self._wake_writer()
        return True

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
            self._wake_writer()
        return True

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
        self.state = ConnectionState.CLOSED
        self._outbox = None

    def _evict(self) -> None:
        logger.warning(
            "client %s on channel %r fell %d messages behind; disconnecting it (%d)",
            self.id,
            self.channel,
            self._settings.send_queue_size,
            CloseCode.POLICY_VIOLATION,
        )
        holding = self.state is ConnectionState.HOLDING
        self.state = ConnectionState.EVICTED
        self._outbox = None
        self._owner.connection_evicted(self)
        writer = self._writer
        if writer is not None and not writer.done() and task_started(writer):
            # Blocked in a send that the client does not read: interrupt it, then close.
            writer.cancel()
        elif not holding or writer is not None:
            # The writer task closes the socket (after release if held). One created in
            # this same burst has not run yet: cancelled now, it would never close it.
            self._wake_writer()

    async def stop_writer(self) -> None:
        """Take nothing more, cancel the writer and wait for it."""
        if self.state is not ConnectionState.EVICTED:
            self.state = ConnectionState.CLOSED
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
        if self.state is not ConnectionState.EVICTED:
            self.state = ConnectionState.CLOSED
        self._outbox = None
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        try:
            await asyncio.wait_for(self.websocket.close(code, reason), self._settings.close_timeout)
        except TimeoutError:  # before OSError, of which it is a subclass
            self._abort(code)
        except (RuntimeError, OSError, WebSocketDisconnect) as exc:  # closed by the peer
            logger.debug("close(%s) of %s did not complete: %r", code, self.id, exc)

    def _abort(self, code: int) -> None:
        if self._direct is not None:
            logger.info(
                "client %s did not take its close frame (%d); connection aborted", self.id, code
            )
            self._direct.abort()
        else:
            warn_cannot_abort(self.id, code)

    async def _write_until_closed(self) -> None:
        try:
            await self._drain_forever()
        except asyncio.CancelledError:
            if self.state is not ConnectionState.EVICTED:
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
        while self.state is not ConnectionState.EVICTED:
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
                while self._outbox:
                    await self._send(self._outbox.popleft())
            finally:
                self._writing = False
