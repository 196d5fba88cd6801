"""The fan-out core: local sockets, the membership mirror, regeneration, delivery, replay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.websockets import WebSocket

from ..errors import CloseCode, ConfigurationError
from ..gc_policy import make_full_collections_rarer
from ..metrics import Metrics
from ..settings import PubSubSettings, WireFormat
from ..tasks import TaskSupervisor
from .backend import Backend
from .client import ClientConnection
from .delivery import LocalDelivery
from .joins import RuntimeJoins
from .mirror import MembershipMirror
from .receiver import Receiver
from .regeneration import Regenerator
from .registration import Registration
from .registry import LocalRegistry
from .replay import ReconnectHook, StoredDelivery
from .sockets import SocketHooks
from .subscription import SubscriberPolicy, Subscribers, Subscription
from .targeted import TargetedSender
from .view import ChannelView

logger = logging.getLogger("fastapi_pubsub_cluster")


class FanOut:
    """Knows which connections are in which channel and delivers messages to them.

    It *has* a backend: a transport it tells what to follow and hears through one door
    (:attr:`receiver`), a presence store where it registers its connections, and maybe
    a history store. Local sockets live in ``channel -> {connection id:
    ClientConnection}``; membership (:attr:`view`) mirrors the whole cluster. After each
    membership event, the channel's ``generate_object_to_send`` runs once for this
    worker's sockets; a burst of events coalesces into fewer runs, one at a time, and the
    last run always starts after the last event.
    """

    def __init__(
        self, backend: Backend, settings: PubSubSettings, metrics: Metrics | None = None
    ) -> None:
        if settings.history_channels and backend.history_store is None:
            raise ConfigurationError(
                "PUBSUB_HISTORY_CHANNELS is set, but this backend keeps no history"
            )
        self.backend = backend
        self.transport = backend.transport
        self.settings = settings
        #: Where figures go (no-op unless the hub was given e.g. ``PrometheusMetrics``).
        self.metrics = metrics if metrics is not None else Metrics()
        local = self._local = LocalRegistry()
        self.metrics.bind(lambda: len(local), lambda: len(local.channels()))
        mirror = self._mirror = MembershipMirror()
        #: Who is in which channel, read-only (what sockets see as ``connection_manager``).
        self.view = ChannelView(mirror, backend.presence_store)
        self._reconnect_hooks: list[ReconnectHook] = []
        self._tasks = TaskSupervisor("fan-out")
        delivery = LocalDelivery(local, mirror, settings, self.metrics)
        self._deliver = delivery.to_channel
        regenerator = Regenerator(
            local,
            self._deliver,
            self._tasks,
            announce=delivery.presence,
            interval=settings.presence_interval,
        )
        self._registration = Registration(
            self.transport,
            backend.presence_store,
            self._tasks,
            listens=self._listens,
            unfollowed=self._unfollowed,
        )
        registration = self._registration
        self._subscribers = Subscribers(
            registration.update_following, registration.unfollow_if_unused, self._tasks
        )
        self._targeted = TargetedSender(
            local, self.transport, backend.presence_store, settings, self.metrics
        )
        self._stored = StoredDelivery(
            backend.history_store, settings, self._deliver, self._subscribers.feed
        )
        self._joins = RuntimeJoins(local, registration, settings, self._stored)
        #: The one door through which the backend reports what it hears.
        self.receiver = Receiver(
            local,
            mirror,
            deliver=self._deliver,
            stored=self._stored,
            subscribers=self._subscribers,
            targeted=self._targeted,
            regenerator=regenerator,
            reconnect_hooks=self._reconnect_hooks,
            tasks=self._tasks,
            settings=settings,
            metrics=self.metrics,
            follows=registration.follows,
        )

    @property
    def worker_id(self) -> str:
        """This worker's id in the cluster."""
        return self.transport.worker_id

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend; raises if it cannot be reached."""
        if self.settings.gc_tuning:
            make_full_collections_rarer()
        await self.transport.start(self.receiver)

    async def stop(self) -> None:
        """Remove this worker's presence, close sockets with 1001, stop background work."""
        await self.transport.stop()
        self._registration.forget_all()
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
            await self._registration.register(connection, channel, notify=notify)
            if connection.resume_from is not None:
                replay, replayed_to = await self._stored.replay_frames(
                    channel, connection.resume_from, report_gap=asked, tagged=connection.tagged
                )
                connection.set_replay(replay, replayed_to)
        except BaseException:
            if self._local.remove(connection):
                self._registration.unregister(connection, connection.channels, notify=notify)
            raise

    async def disconnect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Unregister ``connection``; a second call does nothing.

        The local entry goes at once; the cluster-wide removal runs as a task of the core,
        so that it completes even when the caller is cancelled.
        """
        if self._local.remove(connection):
            leaving = self._registration.unregister(connection, connection.channels, notify=notify)
            await asyncio.shield(leaving)

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
            self._registration.unregister(connection, connection.channels, notify=True)

    def message_dropped(self, connection: ClientConnection) -> None:
        """A slow client lost its oldest queued message (``drop_oldest``)."""
        self.metrics.dropped()

    def _listens(self, channel: str) -> bool:
        # What decides whether this worker hears a channel: sockets or subscribers here.
        return channel in self._local or self._subscribers.listens(channel)

    def _unfollowed(self, channel: str) -> None:
        self._mirror.drop(channel)
        self._stored.forget(channel)

    # -- introspection -----------------------------------------------------------------

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

    # -- publishing --------------------------------------------------------------------

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Deliver ``payload`` to every client of ``channel`` on every worker, except
        connection ``exclude``."""
        self.settings.validate_channel_id(channel)
        await self.transport.publish(channel, payload, exclude=exclude)
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
        channel: str | Sequence[str],
        *,
        max_queue: int | None = None,
        policy: SubscriberPolicy = "drop_oldest",
    ) -> AbstractAsyncContextManager[Subscription]:
        """Read ``channel``'s published messages from Python, on every worker's behalf:
        ``async with fanout.subscribe(channel) as messages: async for m in messages``
        (several channels: one subscription whose :meth:`~Subscription.next_frame` says
        each frame's channel).

        At most ``max_queue`` (default ``send_queue_size``) wait unread; beyond that
        ``policy`` applies (see :class:`Subscription`).
        """
        for one in (channel,) if isinstance(channel, str) else channel:
            self.settings.validate_channel_id(one)
        size = max_queue if max_queue is not None else self.settings.send_queue_size
        return self._subscribers.subscribe(channel, size, policy)

    def add_reconnect_hook(self, hook: ReconnectHook) -> None:
        """Call ``hook`` after the backend's link comes back (messages in the gap were lost)."""
        self._reconnect_hooks.append(hook)
