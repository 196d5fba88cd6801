"""The fan-out core: local sockets, the membership mirror, regeneration, delivery, replay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.websockets import WebSocket

from ..codec import (
    Envelope,
    EventKind,
    OutgoingFrame,
    history_gap_frame,
    stored_message_frame,
    stream_id_order,
)
from ..errors import CloseCode, MalformedMessageError
from ..metrics import Metrics
from ..settings import PubSubSettings, WireFormat
from ..tasks import TaskSupervisor
from .backend import Backend, BackendEvent, ChannelDropped, ChannelLoaded, LinkRestored
from .client import ClientConnection, SocketHooks
from .mirror import MembershipMirror
from .regeneration import HOOK_TIMEOUT, Regenerator
from .registry import LocalRegistry

logger = logging.getLogger("fastapi_pubsub_cluster")

ReconnectHook = Callable[[], Awaitable[None]]

#: Publication ids remembered to drop repeats (a publish retried after a timeout).
SEEN_PUBLICATIONS = 16_384


class RecentIds:
    """The last ``capacity`` ids seen, in arrival order."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        self._ids: dict[str, None] = {}
        self._capacity = capacity

    def add(self, item: str) -> bool:
        """Remember ``item``; False if it was seen already."""
        ids = self._ids
        if item in ids:
            return False
        ids[item] = None
        if len(ids) > self._capacity:
            del ids[next(iter(ids))]
        return True


class FanOut:
    """Knows which connections are in which channel and delivers messages to them.

    It *has* a :class:`~fastapi_pubsub_cluster.core.backend.Backend` (in memory or Redis)
    and hears from it through :meth:`receive` only. Local sockets live in
    ``channel -> {connection id: ClientConnection}``; membership (:meth:`get`) mirrors the
    whole cluster. After each membership event, the channel's ``generate_object_to_send``
    runs once for this worker's sockets; a burst of events coalesces into fewer runs, one
    at a time, and the last run always starts after the last event.
    """

    def __init__(
        self, backend: Backend, settings: PubSubSettings, metrics: Metrics | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings
        #: Where figures go (no-op unless the hub was given e.g. ``PrometheusMetrics``).
        self.metrics = metrics if metrics is not None else Metrics()
        self._local = LocalRegistry()
        self.metrics.bind(lambda: len(self._local), lambda: len(self._local.channels()))
        self._mirror = MembershipMirror()
        # Newest stored message delivered per history channel: replays start there, and
        # older or repeated ids are never delivered twice.
        self._last_stored: dict[str, str] = {}
        # History channels replaying what a lost link missed: live stored messages wait
        # here until the replay is done, so that none overtakes it (or moves its start).
        self._replaying: dict[str, list[tuple[str, Any, float]]] = {}
        self._seen = RecentIds(SEEN_PUBLICATIONS)
        self._reconnect_hooks: list[ReconnectHook] = []
        self._tasks = TaskSupervisor("fan-out")
        self._regenerator = Regenerator(self._local, self._deliver, self._tasks)

    @property
    def worker_id(self) -> str:
        """This worker's id in the cluster."""
        return self.backend.worker_id

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend; raises if it cannot be reached."""
        await self.backend.start(self)

    async def stop(self) -> None:
        """Remove this worker's presence, close sockets with 1001, stop background work."""
        await self.backend.stop()
        await asyncio.gather(
            *(
                c.close(CloseCode.GOING_AWAY, "server shutting down")
                for c in self._local.everyone()
            ),
            return_exceptions=True,
        )
        await self._tasks.close()
        self._local.clear()
        self._mirror.clear()
        self._last_stored.clear()
        self._replaying.clear()

    # -- local connections -------------------------------------------------------------

    def connection(
        self,
        websocket: WebSocket,
        channel: str,
        connection_id: str,
        *,
        hooks: SocketHooks,
        wire_format: WireFormat,
        resume_from: str | None = None,
    ) -> ClientConnection:
        """A connection for ``websocket``, holding messages until released."""
        return ClientConnection(
            websocket,
            channel,
            connection_id,
            owner=self,
            hooks=hooks,
            settings=self.settings,
            wire_format=wire_format,
            resume_from=resume_from,
        )

    async def connect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Register ``connection`` in its channel, cluster-wide, and set aside its replay.

        Messages wait until the caller releases the connection. If anything fails, the
        connection is registered nowhere (a join that may have reached the backend is
        undone) and the error propagates.
        """
        channel = connection.channel
        self._local.add(connection)
        try:
            await self.backend.join(channel, connection.id, notify=notify)
            if connection.resume_from is not None:
                await self._prepare_replay(connection, connection.resume_from)
        except BaseException:
            if self._local.remove(connection):
                self._spawn_leave(connection, notify)
            raise

    async def disconnect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Unregister ``connection``; a second call does nothing.

        The local entry goes at once; the cluster-wide removal runs as a task of the core,
        so that it completes even when the caller is cancelled.
        """
        if self._local.remove(connection):
            await asyncio.shield(self._spawn_leave(connection, notify))

    def connection_evicted(self, connection: ClientConnection) -> None:
        """A client fell behind: it must not count or receive any more."""
        self.metrics.slow_client_disconnected()
        if self._local.remove(connection):
            self._spawn_leave(connection, True)

    def message_dropped(self, connection: ClientConnection) -> None:
        """A slow client lost its oldest queued message (``drop_oldest``)."""
        self.metrics.dropped()

    def _spawn_leave(self, connection: ClientConnection, notify: bool) -> asyncio.Task[None]:
        return self._tasks.spawn(
            self._leave(connection.channel, connection.id, notify),
            name=f"pubsub-leave-{connection.id}",
        )

    async def _leave(self, channel: str, connection_id: str, notify: bool) -> None:
        try:
            await self.backend.leave(channel, connection_id, notify=notify)
        except Exception as exc:  # the backend retries it; nothing to tell the socket
            logger.warning("leave of %s not recorded yet: %r", connection_id, exc)

    def local_members(self, channel: str) -> Collection[str]:
        """Ids of this worker's connections in ``channel``."""
        return self._local.ids(channel)

    def local_channels(self) -> Collection[str]:
        """Channels with at least one connection on this worker."""
        return self._local.channels()

    def local_connections(self, channel: str) -> list[ClientConnection]:
        """This worker's connections in ``channel``."""
        return self._local.connections(channel)

    @property
    def local_connection_count(self) -> int:
        """Connections held by this worker."""
        return len(self._local)

    @property
    def mirrored_channels(self) -> list[str]:
        """Channels whose cluster-wide membership this worker mirrors now."""
        return self._mirror.channels()

    @property
    def pending_tasks(self) -> int:
        """Leaves, regenerations and hooks still running in the background."""
        return len(self._tasks)

    # -- membership and publishing -----------------------------------------------------

    def get(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` on every worker, from this worker's mirror.

        Synchronous, as in the original package: ``len(manager.get(channel))`` is the
        cluster-wide count. It trails the source of truth by the backend's latency.
        """
        return self._mirror.get(channel)

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` read from the source of truth (not the mirror)."""
        return await self.backend.members(channel)

    async def count(self, channel: str) -> int:
        """Number of connections in ``channel`` read from the source of truth."""
        return len(await self.backend.members(channel))

    async def publish(self, channel: str, payload: Any) -> None:
        """Deliver ``payload`` to every client of ``channel`` on every worker."""
        self.settings.validate_channel_id(channel)
        await self.backend.publish(channel, payload)
        self.metrics.published()

    def add_reconnect_hook(self, hook: ReconnectHook) -> None:
        """Call ``hook`` after the backend's link comes back (messages in the gap were lost)."""
        self._reconnect_hooks.append(hook)

    # -- what the backend hears --------------------------------------------------------

    def receive(self, event: BackendEvent) -> None:
        """The one door through which a backend reports what it hears."""
        if isinstance(event, Envelope):
            kind = event.kind
            if kind is EventKind.MESSAGE:
                if self._seen.add(event.ref):  # a retried publish arrives twice
                    self._deliver(event.channel, OutgoingFrame(event.payload), event.sent_at)
            elif kind is EventKind.STORED:
                self._deliver_stored(event.channel, event.ref, event.payload, event.sent_at)
            elif self._mirror.is_loaded(event.channel):
                if self._mirror.apply(event, self._local.intern) and event.payload:
                    self._regenerator.schedule(event.channel)
            elif event.channel in self._local:
                self._mirror.hold_early(event)
        elif isinstance(event, ChannelLoaded):
            self._mirror.load(event, self._local.intern)
        elif isinstance(event, ChannelDropped):
            self._mirror.drop(event.channel)
            self._last_stored.pop(event.channel, None)
            self._replaying.pop(event.channel, None)
        elif isinstance(event, LinkRestored):
            # Now, before the link reads again: the replay starts after what was delivered.
            for channel in event.channels:
                if channel in self._last_stored:
                    self._replaying.setdefault(channel, [])
            self._tasks.spawn(self._resync(event.channels), name="pubsub-resync")

    # -- delivery ----------------------------------------------------------------------

    def _deliver(self, channel: str, frame: OutgoingFrame, sent_at: float = 0.0) -> int:
        """Hand ``frame`` to every local client of ``channel``; returns how many took it."""
        conns = self._local.in_channel(channel)
        if not conns:
            return 0
        delivered = 0
        failed = False
        # A copy: a client that falls behind is removed while we iterate.
        for connection in list(conns.values()):
            try:
                delivered += connection.offer(frame)
            except MalformedMessageError as exc:
                # This client's wire format cannot carry the payload; others' may.
                if not failed:
                    logger.error("cannot deliver a message on %r: %s", channel, exc)
                failed = True
            except Exception:  # one client's failure never stops the others
                logger.exception("delivery to %s failed", connection.id)
        self.metrics.delivered(delivered, sent_at)
        return delivered

    def _deliver_stored(
        self, channel: str, stream_id: str, payload: Any, sent_at: float, replay: bool = False
    ) -> None:
        held = self._replaying.get(channel)
        if held is not None and not replay:
            held.append((stream_id, payload, sent_at))
            return
        last = self._last_stored.get(channel)
        if last is not None and stream_id_order(stream_id) <= stream_id_order(last):
            return  # already delivered (a replay, or heard twice)
        self._last_stored[channel] = stream_id
        self._deliver(channel, stored_message_frame(stream_id, payload), sent_at)

    async def _prepare_replay(self, connection: ClientConnection, since: str) -> None:
        """Set aside what the channel stored after ``since``, to go before live messages."""
        channel = connection.channel
        if not self.settings.has_history(channel):
            connection.set_replay([history_gap_frame(since, None)], None)
            return
        stored = await self.backend.history(channel, since)
        frames = [] if stored.complete else [history_gap_frame(since, stored.oldest)]
        frames.extend(
            stored_message_frame(stream_id, payload) for stream_id, payload in stored.entries
        )
        connection.set_replay(frames, stored.entries[-1][0] if stored.entries else since)

    # -- after a lost link -------------------------------------------------------------

    async def _resync(self, channels: tuple[str, ...]) -> None:
        """Replay what history channels stored in the gap, regenerate, tell the app."""
        self.metrics.redis_reconnected()
        for channel in channels:
            try:
                await self._replay_missed(channel)
            except Exception as exc:
                logger.warning("could not replay missed messages on %r: %r", channel, exc)
            self._regenerator.schedule(channel)
        # Concurrently: one slow hook must not hold up the others.
        await asyncio.gather(
            *(self._run_hook(h(), "reconnect hook") for h in self._reconnect_hooks)
        )
        conns = [c for channel in channels for c in self.local_connections(channel)]
        if self.settings.close_clients_on_reconnect:
            reason = "pub/sub link was lost; reconnect to resync"
            await asyncio.gather(
                *(c.close(CloseCode.SERVICE_RESTART, reason) for c in conns),
                return_exceptions=True,
            )
            return
        await asyncio.gather(
            *(self._run_hook(c.hooks.on_reconnect(), "on_reconnect") for c in conns)
        )

    async def _replay_missed(self, channel: str) -> None:
        try:
            last = self._last_stored.get(channel)
            if last is None or not self.settings.has_history(channel):
                return
            stored = await self.backend.history(channel, last)
            for stream_id, payload in stored.entries:
                self._deliver_stored(channel, stream_id, payload, 0.0, replay=True)
            if stored.entries:
                logger.info("replayed %d missed messages on %r", len(stored.entries), channel)
        finally:  # then what arrived meanwhile (newer ones only), even if the replay failed
            for stream_id, payload, sent_at in self._replaying.pop(channel, []):
                self._deliver_stored(channel, stream_id, payload, sent_at, replay=True)

    @staticmethod
    async def _run_hook(call: Awaitable[None], what: str) -> None:
        """Await an application hook within its time limit; its failure is logged only."""
        try:
            async with asyncio.timeout(HOOK_TIMEOUT):
                await call
        except Exception:
            logger.exception("%s failed", what)
