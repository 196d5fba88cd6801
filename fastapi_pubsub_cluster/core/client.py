"""One local client socket as the core sees it: the channels it is in, and their messages
held, replayed and released in order into its :class:`~.outbox.Outbox`."""

from __future__ import annotations

from typing import Any, Protocol

from starlette.websockets import WebSocket

from ..frames import OutgoingFrame
from ..settings import PubSubSettings, WireFormat
from .flow import ChannelFlow
from .lifecycle import ConnectionState
from .outbox import Outbox
from .sockets import SocketHooks

__all__ = ["ClientConnection", "ConnectionOwner", "ConnectionState"]


class ConnectionOwner(Protocol):
    """What a connection tells the core that registered it."""

    def connection_evicted(self, connection: ClientConnection) -> None:
        """``connection`` fell behind and is being closed: unregister it at once."""

    def message_dropped(self, connection: ClientConnection) -> None:
        """``connection`` lost its oldest queued message (``drop_oldest`` policy)."""


class ClientConnection:
    """A websocket held by this worker, as the core sees it.

    Fan-out calls :meth:`offer`, which never awaits. The frame is written at once when the
    socket takes it without waiting; otherwise it goes into a bounded outbox that a writer
    task (created on first need) drains. When the outbox is full the slow-client policy
    applies to this client alone (see :class:`~.outbox.Outbox`, which the connection has).
    """

    __slots__ = (
        "_extra",
        "_outbox",
        "_own",
        "_owner",
        "_settings",
        "channel",
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
        # Further channels joined at runtime; None until the first (most sockets have none).
        self._extra: dict[str, ChannelFlow] | None = None
        # Registered before the handshake completes: live messages wait until release().
        self.state = ConnectionState.HOLDING
        self._settings = settings
        self._own = ChannelFlow()  # its own channel: held until the handshake completes
        self._owner = owner
        self._outbox = Outbox(self, settings=settings)

    def fell_behind(self) -> None:
        """Its outbox is evicting it: the owner unregisters it at once."""
        self._owner.connection_evicted(self)

    def lost_oldest(self) -> None:
        """Its outbox dropped its oldest message (``drop_oldest``)."""
        self._owner.message_dropped(self)

    def mark_evicted(self) -> None:
        """Its outbox evicts it: it takes nothing more, and is closed with 1008."""
        self.state = ConnectionState.EVICTED

    def mark_closed(self) -> None:
        """It is closing: it takes nothing more (an evicted one stays evicted)."""
        if self.state is not ConnectionState.EVICTED:
            self.state = ConnectionState.CLOSED

    def mark_lost(self) -> None:
        """A send to it failed: the client vanished."""
        self.state = ConnectionState.CLOSED

    @property
    def evicted(self) -> bool:
        """True once the client was disconnected for falling behind."""
        return self.state is ConnectionState.EVICTED

    @property
    def has_direct_path(self) -> bool:
        """True when the server integration can write broadcasts' frames straight to it."""
        return self._outbox.has_direct_path

    @property
    def frames_written_directly(self) -> int:
        """Frames written by the server integration's direct path (0 without one)."""
        return self._outbox.frames_written_directly

    @property
    def dropped_messages(self) -> int:
        """Messages dropped for falling behind (``drop_oldest`` policy)."""
        return self._outbox.dropped

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
            return self._outbox.push(frame, bounded=True)
        if state is ConnectionState.HOLDING:
            # Before the handshake or a replay: live messages wait, none may overtake.
            if self._own.hold(frame, self._settings.send_queue_size):
                return True
            self._outbox.evict()
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
            self._outbox.evict()
            return False
        if flow.is_repeat(frame):
            return False
        return self._outbox.push(frame, bounded=True)

    def send_event(self, frame: OutgoingFrame) -> bool:
        """Queue a control frame (e.g. ``joined``) behind what was queued before it."""
        if self.state is not ConnectionState.OPEN:
            return False
        return self._outbox.push(frame, bounded=True)

    def send_event_in(self, channel: str, frame: OutgoingFrame) -> bool:
        """Queue a control frame about ``channel`` (its ``presence``), held with the
        channel's messages until the client is told it is in it (its welcome, or
        ``joined``): a client never hears of a channel before it hears it joined."""
        if channel == self.channel:
            flow: ChannelFlow | None = self._own if self.state is ConnectionState.HOLDING else None
        elif self.state is ConnectionState.OPEN and self._extra is not None:
            flow = self._extra.get(channel)
            if flow is None:
                return False
        else:
            flow = None
        if flow is not None and flow.held is not None:
            return flow.hold(frame, self._settings.send_queue_size)
        return self.send_event(frame)

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
            self._outbox.push(frame, bounded=False)  # history is bounded by history_size itself
        for frame in held:
            if not self._outbox.push(frame, bounded=True):
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
            self._outbox.wake_writer()  # fell behind before the handshake: the writer closes it
            return
        if self.state is not ConnectionState.HOLDING:
            return
        self.state = ConnectionState.OPEN
        self._release(self._own)

    async def stop_writer(self) -> None:
        """Take nothing more, cancel the writer and wait for it."""
        await self._outbox.stop_writer()

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket with ``code`` within ``close_timeout``: with a close frame when
        it can be written, else by aborting the connection (a client that stopped reading
        leaves the server's buffers full, and a close frame would wait behind them)."""
        await self._outbox.close(code, reason)
