"""The fan-out core: local sockets, the membership mirror, regeneration, delivery, replay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.websockets import WebSocket

from ..codec import (
    Envelope,
    EventKind,
    OutgoingFrame,
    membership_notify,
)
from ..errors import CloseCode
from ..metrics import Metrics
from ..settings import PubSubSettings, WireFormat
from ..tasks import TaskSupervisor
from .backend import (
    Backend,
    BackendEvent,
    ChannelDropped,
    ChannelLoaded,
    ChannelReloading,
    LinkRestored,
)
from .client import ClientConnection
from .delivery import LocalDelivery
from .joins import RuntimeJoins
from .mirror import MembershipMirror
from .recent import SEEN_PUBLICATIONS, RecentIds
from .regeneration import Regenerator
from .registry import LocalRegistry
from .replay import StoredDelivery, resync
from .sockets import SocketHooks
from .subscription import SubscriberPolicy, Subscribers, Subscription
from .targeted import TargetedSender

logger = logging.getLogger("fastapi_pubsub_cluster")

ReconnectHook = Callable[[], Awaitable[None]]


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
        self._seen = RecentIds(SEEN_PUBLICATIONS)
        self._reconnect_hooks: list[ReconnectHook] = []
        self._tasks = TaskSupervisor("fan-out")
        self._delivery = LocalDelivery(self._local, self._mirror, settings, self.metrics)
        self._deliver = self._delivery.to_channel
        self._regenerator = Regenerator(
            self._local, self._deliver, self._tasks, announce=self._delivery.presence
        )
        self._subscribers = Subscribers(backend.follow, self._tasks)
        self._targeted = TargetedSender(self._local, backend, settings, self.metrics)
        self._stored = StoredDelivery(backend, settings, self._deliver, self._subscribers.feed)
        self._joins = RuntimeJoins(self._local, backend, settings, self._stored, self._spawn_leave)

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
        self._subscribers.close_all()
        await self._tasks.close()
        self._local.clear()
        self._mirror.clear()
        self._stored.clear()

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
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tagged: bool = False,
    ) -> ClientConnection:
        """A connection for ``websocket``, holding messages until released; with
        ``tagged``, every channel frame says its channel."""
        return ClientConnection(
            websocket,
            channel,
            connection_id,
            owner=self,
            hooks=hooks,
            settings=self.settings,
            wire_format=wire_format,
            resume_from=resume_from,
            user_id=user_id,
            metadata=metadata,
            tagged=tagged,
        )

    async def connect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Register ``connection`` in its channel, cluster-wide, and set aside its replay.

        Messages wait until the caller releases the connection. If anything fails, the
        connection is registered nowhere (a join that may have reached the backend is
        undone) and the error propagates.
        """
        channel = connection.channel
        asked = connection.resume_from is not None
        # A tagged client learns where to resume (its welcome); on a history channel the
        # worker also needs a start for this channel (once), to replay what a lost link
        # misses.
        if connection.tagged or (not asked and self._stored.lacks_start(channel)):
            connection.resume_from = await self._stored.resume_point(
                channel, connection.resume_from
            )
        self._local.add(connection)
        self.metrics.connection_opened("direct" if connection.has_direct_path else "asgi")
        try:
            await self.backend.join(
                channel,
                connection.id,
                notify=notify,
                user_id=connection.user_id,
                metadata=connection.metadata,
            )
            if connection.resume_from is not None:
                replay, replayed_to = await self._stored.replay_frames(
                    channel, connection.resume_from, report_gap=asked, tagged=connection.tagged
                )
                connection.set_replay(replay, replayed_to)
        except BaseException:
            if self._local.remove(connection):
                self._spawn_leaves(connection, notify)
            raise

    async def disconnect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Unregister ``connection``; a second call does nothing.

        The local entry goes at once; the cluster-wide removal runs as a task of the core,
        so that it completes even when the caller is cancelled.
        """
        if self._local.remove(connection):
            await asyncio.shield(self._spawn_leaves(connection, notify))

    async def join(
        self, connection: ClientConnection, channel: str, *, since: str | None = None
    ) -> bool:
        """Put a running connection in ``channel`` too, on every worker (its frames there
        are tagged with the channel); False if it was in it already. With ``since``, the
        channel's stored messages after that id come first. Raises InvalidChannelError,
        ChannelLimitError, NotJoinedError or BackendUnavailableError (nothing joined)."""
        return await self._joins.join(connection, channel, since)

    async def leave(self, connection: ClientConnection, channel: str) -> bool:
        """Take a connection out of a further channel; False if it was not in it."""
        return await self._joins.leave(connection, channel)

    def connection_evicted(self, connection: ClientConnection) -> None:
        """A client fell behind: it must not count or receive any more."""
        self.metrics.slow_client_disconnected()
        if self._local.remove(connection):
            self._spawn_leaves(connection, True)

    def message_dropped(self, connection: ClientConnection) -> None:
        """A slow client lost its oldest queued message (``drop_oldest``)."""
        self.metrics.dropped()

    def _spawn_leaves(self, connection: ClientConnection, notify: bool) -> asyncio.Task[None]:
        # Further channels first: the own channel's leave also ends the directory entry.
        own = connection.channel
        leaves = [(c, False) for c in connection.channels if c != own] + [(own, True)]
        return self._tasks.spawn(
            self._leave_all(leaves, connection.id, notify), name=f"pubsub-leave-{connection.id}"
        )

    def _spawn_leave(
        self, channel: str, connection: ClientConnection, notify: bool
    ) -> asyncio.Task[None]:
        return self._tasks.spawn(
            self._leave_all([(channel, False)], connection.id, notify),
            name=f"pubsub-leave-{connection.id}",
        )

    async def _leave_all(
        self, leaves: list[tuple[str, bool]], connection_id: str, notify: bool
    ) -> None:
        for channel, directory in leaves:
            try:
                await self.backend.leave(channel, connection_id, notify=notify, directory=directory)
            except Exception as exc:  # the backend retries it; nothing to tell the socket
                logger.warning("leave of %s not recorded yet: %r", connection_id, exc)

    def local_members(self, channel: str) -> Collection[str]:
        """Ids of this worker's connections in ``channel``."""
        return self._local.ids(channel)

    def local_channels(self) -> Collection[str]:
        """Channels with at least one connection on this worker."""
        return self._local.channels()

    def local_user_ids(self) -> Mapping[str, str | None]:
        """Every connection id on this worker, with its user id (None without one)."""
        return self._local.user_ids()

    def local_metadata(self, channel: str) -> Mapping[str, Any]:
        """Presence metadata of this worker's connections in ``channel`` that have some."""
        return {
            c.id: c.metadata for c in self._local.connections(channel) if c.metadata is not None
        }

    def listens(self, channel: str) -> bool:
        """True while this worker has sockets or server-side subscribers in ``channel``."""
        return channel in self._local or self._subscribers.listens(channel)

    def mirror_state(self, channel: str) -> tuple[int, int] | None:
        """``channel``'s mirror: its last membership event and its number of members."""
        return self._mirror.state(channel)

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

    def presence_of(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel`` on every
        worker, from this worker's mirror (no I/O)."""
        return self._mirror.presence(channel)

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``, read from the
        source of truth."""
        return await self.backend.presence(channel)

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` read from the source of truth (not the mirror)."""
        return await self.backend.members(channel)

    async def count(self, channel: str) -> int:
        """Number of connections in ``channel`` read from the source of truth."""
        return len(await self.backend.members(channel))

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Deliver ``payload`` to every client of ``channel`` on every worker, except
        connection ``exclude``."""
        self.settings.validate_channel_id(channel)
        await self.backend.publish(channel, payload, exclude=exclude)
        self.metrics.published()

    async def send_to(self, connection_id: str, payload: Any) -> int:
        """Send ``payload`` to one connection on whatever worker holds it; how many
        sockets took it (0 for an unknown or absent connection: no error)."""
        return await self._targeted.send_to(connection_id, payload)

    async def send_to_user(self, user_id: str, payload: Any) -> int:
        """Send ``payload`` to every connection of ``user_id`` on every worker; how many
        sockets took it (0 if the user has none)."""
        return await self._targeted.send_to_user(user_id, payload)

    def subscribe(
        self,
        channel: str,
        *,
        max_queue: int | None = None,
        policy: SubscriberPolicy = "drop_oldest",
    ) -> AbstractAsyncContextManager[Subscription]:
        """Read ``channel``'s published messages from Python, on every worker's behalf:
        ``async with fanout.subscribe(channel) as messages: async for m in messages``.

        At most ``max_queue`` (default ``send_queue_size``) wait unread; beyond that
        ``policy`` applies (see :class:`Subscription`).
        """
        self.settings.validate_channel_id(channel)
        size = max_queue if max_queue is not None else self.settings.send_queue_size
        return self._subscribers.subscribe(channel, size, policy)

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
                    channel = event.channel
                    frame = OutgoingFrame(event.payload)
                    self._deliver(channel, frame, event.sent_at, event.exclude)
                    self._subscribers.feed(channel, event.payload)
            elif kind is EventKind.STORED:
                self._stored.deliver(
                    event.channel, event.ref, event.payload, event.sent_at, event.exclude
                )
            elif kind is EventKind.DIRECT:
                if self._seen.add(event.ref):
                    connection_ids, payload = event.payload
                    self._targeted.deliver(connection_ids, OutgoingFrame(payload))
            elif self._mirror.is_loaded(event.channel):
                applied = self._mirror.apply(event, self._local.intern)
                if applied and membership_notify(event.payload):
                    self._regenerator.schedule(event.channel)
            elif event.channel in self._local:
                self._mirror.hold_early(event)
        elif isinstance(event, ChannelLoaded):
            if self._mirror.load(event, self._local.intern):
                # A check's reload corrected the view. (After a lost link, the resync
                # regenerates once its replay is done.)
                self._regenerator.schedule(event.channel)
        elif isinstance(event, ChannelReloading):
            self._mirror.begin_reload(event.channel)
        elif isinstance(event, ChannelDropped):
            self._mirror.drop(event.channel)
            self._stored.forget(event.channel)
        elif isinstance(event, LinkRestored):
            # Now, before the link reads again: the replay starts after what was delivered.
            self._stored.hold(event.channels)
            resyncing = resync(
                event.channels,
                stored=self._stored,
                regenerator=self._regenerator,
                hooks=self._reconnect_hooks,
                connections=self.local_connections,
                settings=self.settings,
                metrics=self.metrics,
            )
            self._tasks.spawn(resyncing, name="pubsub-resync")
