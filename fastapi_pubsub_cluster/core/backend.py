"""The contracts between the fan-out core and a backend (in memory, Redis).

A backend is three small contracts: a :class:`Transport` that moves envelopes between
workers, a :class:`PresenceStore` that keeps who is in which channel cluster-wide, and,
optionally, a :class:`HistoryStore` that keeps channels' recent messages. The core decides
what to follow (:meth:`Transport.follow`, :meth:`Transport.unfollow`) and when to register;
the transport reports everything it hears through one door, :meth:`FanOutSink.receive`,
and a presence store reads the core's local truth (which connections this worker holds)
when it reconciles.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..envelope import Envelope


@dataclass(frozen=True, slots=True)
class ChannelLoaded:
    """The backend now hears ``channel``: its members as of membership event ``seq``.

    Membership events with a sequence number up to ``seq`` are part of ``members``;
    ``metadata`` holds the presence metadata of the members that have some.
    """

    channel: str
    members: frozenset[str]
    seq: int
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChannelReloading:
    """A new snapshot of ``channel`` is on its way (a :class:`ChannelLoaded`): the events
    heard until then are kept, to be applied after it where they are newer."""

    channel: str


@dataclass(frozen=True, slots=True)
class LinkRestored:
    """The backend lost its link for ``channels`` and has it back: messages published in
    the gap were not heard (history channels can be replayed)."""

    channels: tuple[str, ...]


#: What a backend reports: an envelope from a channel, or a change in what it hears.
BackendEvent = Envelope | ChannelLoaded | ChannelReloading | LinkRestored


@dataclass(frozen=True, slots=True)
class HistorySlice:
    """Stored messages after a position, oldest first.

    ``complete`` is False when the history no longer reaches back to that position
    (something after it was trimmed, or the history expired); ``oldest`` is the oldest
    id still kept.
    """

    entries: list[tuple[str, Any]]
    oldest: str | None
    complete: bool


class FanOutSink(Protocol):
    """What a backend sees of the core: the door for what it hears, and this worker's
    local truth, read-only."""

    def receive(self, event: BackendEvent) -> None:
        """Take one event; never blocks and never raises for bad input."""

    def local_members(self, channel: str) -> Collection[str]:
        """Ids of this worker's live connections in ``channel``."""

    def local_channels(self) -> Collection[str]:
        """Channels with at least one live connection on this worker."""

    def local_user_ids(self) -> Mapping[str, str | None]:
        """This worker's live connection ids, each with its user id (None without one)."""

    def local_metadata(self, channel: str) -> Mapping[str, Any]:
        """Presence metadata of this worker's live connections in ``channel`` that have
        some."""

    def mirror_state(self, channel: str) -> tuple[int, int] | None:
        """This worker's view of ``channel``: the sequence number of the last membership
        event it took in, and its number of members (None while it has no view of it)."""


class Transport(Protocol):
    """Moves envelopes between workers.

    Every envelope it hears on a followed channel, its own included, goes to
    :meth:`FanOutSink.receive`, and so do the DIRECT envelopes sent to this worker.
    """

    #: An id unique to this worker process across hosts and restarts.
    worker_id: str

    async def start(self, sink: FanOutSink) -> None:
        """Connect and start background work; raises if the backend is unreachable."""

    async def stop(self) -> None:
        """Remove this worker's presence, stop background work, close connections."""

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Deliver ``payload`` to every worker hearing ``channel``, stored first if the
        channel keeps history; connection ``exclude`` (if any) is skipped."""

    async def follow(self, channel: str) -> None:
        """Hear ``channel`` from now on: report :class:`ChannelLoaded` (its members as of
        a membership event), then its envelopes in order. The core calls it once before
        the channel's first local connection registers, or its first server-side
        subscriber reads; raises if the channel cannot be heard (nothing followed)."""

    async def unfollow(self, channel: str) -> None:
        """Stop hearing ``channel``; the core calls it after its last local connection
        and subscriber are gone."""

    async def send(self, worker_id: str, connection_ids: Sequence[str], payload: Any) -> int:
        """Hand ``payload`` to worker ``worker_id`` (not this one) for those of
        ``connection_ids`` it holds, as a DIRECT envelope; how many it holds (0 if the
        worker is gone)."""


class PresenceStore(Protocol):
    """Who is in which channel, cluster-wide: each worker registers its own connections
    (and keeps them registered: a store reconciles them against the core's local truth)."""

    async def join(
        self,
        channel: str,
        connection_id: str,
        *,
        notify: bool,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        directory: bool = True,
    ) -> None:
        """Register a local connection (already in the sink's local truth), with the user
        it belongs to and its presence metadata, if any, and announce the join on the
        channel. With ``directory`` (its own channel), also note the connection in the
        directory of targeted sends; not for the further channels it joins later."""

    async def leave(
        self, channel: str, connection_id: str, *, notify: bool, directory: bool = True
    ) -> None:
        """Unregister a connection (already gone from the sink's local truth) and announce
        it; with ``directory``, also remove it from the directory."""

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` read from the source of truth."""

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``, read from the
        source of truth."""

    async def user_connections(self, user_id: str) -> frozenset[str]:
        """Ids of ``user_id``'s connections on every worker."""


class HistoryStore(Protocol):
    """Reads what history channels stored (the transport stores as it publishes)."""

    async def history(self, channel: str, since: str) -> HistorySlice:
        """What ``channel`` stored after stream id ``since``."""

    async def last_stored_id(self, channel: str) -> str:
        """Where a client joining ``channel`` starts: the id of the newest message it
        stored, or on a channel with none a position whose later messages the store
        vouches for ("0-0" where history cannot be lost while the backend runs)."""


class Backend(Protocol):
    """A transport, a presence store and, if it keeps history, a history store."""

    @property
    def transport(self) -> Transport:
        """Moves envelopes between workers."""

    @property
    def presence_store(self) -> PresenceStore:
        """Who is in which channel, cluster-wide."""

    @property
    def history_store(self) -> HistoryStore | None:
        """Channels' recent messages; None if this backend keeps no history."""


def new_worker_id() -> str:
    """An id unique to this process across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
