"""The connection-manager contract and the local bookkeeping every backend shares."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from typing import Any

from ..codec import OutgoingFrame, history_gap_frame, stored_message_frame
from ..connection import ClientConnection
from ..errors import CloseCode, MalformedMessageError
from ..metrics import Metrics
from ..settings import PubSubSettings
from ..tasks import TaskSupervisor

logger = logging.getLogger("fastapi_pubsub_cluster")


def new_worker_id() -> str:
    """An id unique to this process across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ConnectionManager(ABC):
    """Knows which connections are in which channel and delivers messages to them.

    Local sockets live in ``channel -> {connection_id: ClientConnection}``. Membership
    (:meth:`get`) is a mirror of the whole cluster, updated as membership events are
    applied in the order the backend delivers them. After each event the channel's
    ``generate_object_to_send`` runs once for this worker's sockets; a burst of events
    coalesces into fewer runs, and the last run always starts after the last event.
    """

    def __init__(self, settings: PubSubSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.worker_id = new_worker_id()
        #: Where figures go (no-op unless a hub was given e.g. ``PrometheusMetrics``).
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.bind(lambda: self.local_connection_count, lambda: len(self._local))
        self._local: dict[str, dict[str, ClientConnection]] = {}
        self._members: dict[str, set[str]] = {}
        self._dirty_channels: set[str] = set()
        self._regenerating: dict[str, asyncio.Task[None]] = {}
        self._tasks = TaskSupervisor(type(self).__name__)

    # -- lifecycle ---------------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Open connections and start background work."""

    @abstractmethod
    async def stop(self) -> None:
        """Remove this worker's presence, stop background work and close connections."""

    # -- membership --------------------------------------------------------------------

    async def connect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Register a local connection in its channel, cluster-wide.

        If the connection holds its messages (:meth:`ClientConnection.hold_live_messages`,
        as a socket not yet accepted does), they wait, after any replay, until the caller
        releases them; otherwise they flow once the connection is registered.

        Raises :class:`~fastapi_pubsub_cluster.errors.PublishError` when the backend cannot
        register it; the connection is then not registered anywhere.
        """
        connection.on_evicted = self._evict
        connection.on_dropped = self.metrics.dropped
        held_by_caller = connection.holding
        if not held_by_caller:
            connection.hold_live_messages()
        self._add_local(connection)
        try:
            await self._announce_join(connection, notify)
            if connection.resume_from is not None:
                await self._replay(connection, connection.resume_from)
        except BaseException:
            self._remove_local(connection)
            raise
        if not held_by_caller:
            connection.release()

    async def _replay(self, connection: ClientConnection, since: str) -> None:
        """Set aside what the channel published after ``since``, to go before live messages."""
        channel = connection.channel
        if not self.settings.has_history(channel):
            connection.set_replay([history_gap_frame(since, None)], None)
            return
        entries, oldest, complete = await self._history_after(channel, since)
        frames = [] if complete else [history_gap_frame(since, oldest)]
        frames.extend(stored_message_frame(stream_id, payload) for stream_id, payload in entries)
        connection.set_replay(frames, entries[-1][0] if entries else since)

    @abstractmethod
    async def _history_after(
        self, channel: str, since: str
    ) -> tuple[list[tuple[str, Any]], str | None, bool]:
        """Stored messages after ``since`` in order, the oldest id kept, and whether the
        history still reaches back to ``since`` (nothing after it was trimmed away)."""

    async def disconnect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        """Unregister a local connection; a second call does nothing.

        The local entry goes at once; the cluster-wide removal runs as a task of the
        manager, so it completes even when the caller is cancelled.
        """
        if not self._remove_local(connection):
            return
        task = self._tasks.spawn(
            self._announce_leave(connection, notify), name=f"pubsub-leave-{connection.id}"
        )
        await asyncio.shield(task)

    def _evict(self, connection: ClientConnection) -> None:
        """Unregister a client that fell behind, at once: it must not count or receive."""
        self.metrics.slow_client_disconnected()
        if self._remove_local(connection):
            self._tasks.spawn(
                self._announce_leave(connection, True), name=f"pubsub-evict-{connection.id}"
            )

    @abstractmethod
    async def _announce_join(self, connection: ClientConnection, notify: bool) -> None:
        """Make an already-local connection visible to the cluster."""

    @abstractmethod
    async def _announce_leave(self, connection: ClientConnection, notify: bool) -> None:
        """Remove a connection that already left the local dict from the cluster's view."""

    @abstractmethod
    async def publish(self, channel: str, payload: Any) -> None:
        """Deliver ``payload`` to every client of ``channel`` on every worker."""

    @abstractmethod
    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` read from the source of truth (not the mirror)."""

    async def count(self, channel: str) -> int:
        """Number of connections in ``channel`` read from the source of truth."""
        return len(await self.members(channel))

    def get(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` on every worker, from this worker's mirror.

        Synchronous, as in the original package: ``len(manager.get(channel))`` is the
        cluster-wide count.
        """
        return frozenset(self._members.get(channel, ()))

    def local_connections(self, channel: str) -> list[ClientConnection]:
        """This worker's connections in ``channel``."""
        return list(self._local.get(channel, {}).values())

    @property
    def local_channels(self) -> list[str]:
        """Channels with at least one connection on this worker."""
        return list(self._local)

    @property
    def local_connection_count(self) -> int:
        """Connections held by this worker."""
        return sum(len(conns) for conns in self._local.values())

    # -- helpers for backends ----------------------------------------------------------

    def _add_local(self, connection: ClientConnection) -> None:
        self._local.setdefault(connection.channel, {})[connection.id] = connection

    def _remove_local(self, connection: ClientConnection) -> bool:
        """Remove from the local dict; True if it was there."""
        conns = self._local.get(connection.channel)
        if conns is None or conns.pop(connection.id, None) is None:
            return False
        if not conns:
            del self._local[connection.channel]
        return True

    def _shared_id(self, channel: str, connection_id: str) -> str:
        """The id string the local dict already holds, if the connection is local: the
        mirror then stores one string per local connection, not two."""
        local = self._local.get(channel)
        connection = local.get(connection_id) if local else None
        return connection.id if connection is not None else connection_id

    def _apply_join(self, channel: str, connection_id: str, notify: bool) -> None:
        self._members.setdefault(channel, set()).add(self._shared_id(channel, connection_id))
        if notify:
            self._schedule_regeneration(channel)

    def _apply_leave(self, channel: str, connection_id: str, notify: bool) -> None:
        members = self._members.get(channel)
        if members is not None:
            members.discard(connection_id)
        if notify:
            self._schedule_regeneration(channel)

    def _deliver(self, channel: str, frame: OutgoingFrame, sent_at: float = 0.0) -> int:
        """Hand ``frame`` to every local client of ``channel``; returns how many took it."""
        conns = self._local.get(channel)
        if not conns:
            return 0
        delivered = self._offer_to_all(channel, conns, frame)
        self.metrics.delivered(delivered, sent_at)
        return delivered

    def _offer_to_all(
        self, channel: str, conns: dict[str, ClientConnection], frame: OutgoingFrame
    ) -> int:
        delivered = 0
        # A copy: an overflowing client is removed while we iterate.
        for connection in list(conns.values()):
            try:
                delivered += connection.offer(frame)
            except MalformedMessageError as exc:
                logger.error("dropping message on channel %r: %s", channel, exc)
                return delivered
        return delivered

    def _schedule_regeneration(self, channel: str) -> None:
        if channel not in self._local:
            return
        self._dirty_channels.add(channel)
        if channel not in self._regenerating:
            self._regenerating[channel] = self._tasks.spawn(
                self._regenerate(channel), name=f"pubsub-regenerate-{channel}"
            )

    async def _regenerate(self, channel: str) -> None:
        # One run at a time per channel, so an older result can never overtake a newer one.
        try:
            while channel in self._dirty_channels:
                self._dirty_channels.discard(channel)
                conns = self._local.get(channel)
                if not conns:
                    break
                # The newest local socket speaks for the channel.
                generate = next(reversed(conns.values())).generate
                if generate is None:
                    continue
                try:
                    payload = await generate()
                except Exception:
                    logger.exception("generate_object_to_send failed for channel %r", channel)
                    continue
                if payload is not None:
                    self._deliver(channel, OutgoingFrame(payload))
        finally:
            self._dirty_channels.discard(channel)
            self._regenerating.pop(channel, None)

    async def _notify_link_restored(self, channels: list[str]) -> None:
        """After a lost link: close the clients of ``channels`` with 1012 (if configured) or
        call their ``on_reconnect`` hooks."""
        conns = [c for channel in channels for c in self.local_connections(channel)]
        if self.settings.close_clients_on_reconnect:
            reason = "pub/sub link was lost; reconnect to resync"
            await self._close_connections(conns, CloseCode.SERVICE_RESTART, reason)
            return
        hooks = [c.on_reconnect() for c in conns if c.on_reconnect is not None]
        for outcome in await asyncio.gather(*hooks, return_exceptions=True):
            if isinstance(outcome, Exception):
                logger.error("on_reconnect hook of a socket failed", exc_info=outcome)

    @staticmethod
    async def _close_connections(conns: list[ClientConnection], code: int, reason: str) -> None:
        """Close sockets concurrently, each within its close timeout."""
        await asyncio.gather(*(c.close(code, reason) for c in conns), return_exceptions=True)

    async def _stop_local(self) -> None:
        everyone = [c for channel in list(self._local) for c in self.local_connections(channel)]
        await self._close_connections(everyone, CloseCode.GOING_AWAY, "server shutting down")
        await self._tasks.close()
        self._local.clear()
        self._members.clear()
