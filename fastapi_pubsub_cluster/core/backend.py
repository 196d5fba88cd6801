"""The contract between the fan-out core and a backend (in memory, Redis).

A backend moves envelopes and presence between workers; the core does everything else.
The backend reports everything it hears through one door, :meth:`FanOutSink.receive`,
and reads the core's local truth (which connections this worker holds) when it needs to
register or reconcile presence.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from ..codec import Envelope


@dataclass(frozen=True, slots=True)
class ChannelLoaded:
    """The backend now hears ``channel``: its members as of membership event ``seq``.

    Membership events with a sequence number up to ``seq`` are part of ``members``.
    """

    channel: str
    members: frozenset[str]
    seq: int


@dataclass(frozen=True, slots=True)
class ChannelDropped:
    """The backend no longer hears ``channel`` (its last local connection left)."""

    channel: str


@dataclass(frozen=True, slots=True)
class LinkRestored:
    """The backend lost its link for ``channels`` and has it back: messages published in
    the gap were not heard (history channels can be replayed)."""

    channels: tuple[str, ...]


#: What a backend reports: an envelope from a channel, or a change in what it hears.
BackendEvent = Envelope | ChannelLoaded | ChannelDropped | LinkRestored


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
    """What a backend sees of the core."""

    def receive(self, event: BackendEvent) -> None:
        """Take one event; never blocks and never raises for bad input."""

    def local_members(self, channel: str) -> Collection[str]:
        """Ids of this worker's live connections in ``channel``."""

    def local_channels(self) -> Collection[str]:
        """Channels with at least one live connection on this worker."""


class Backend(Protocol):
    """Moves publications and presence between workers.

    ``join`` and ``leave`` register a local connection cluster-wide (a backend starts
    hearing a channel when its first local connection joins, reporting
    :class:`ChannelLoaded`, and stops after the last one leaves). Every envelope it hears,
    its own included, goes to :meth:`FanOutSink.receive`.
    """

    #: An id unique to this worker process across hosts and restarts.
    worker_id: str

    async def start(self, sink: FanOutSink) -> None:
        """Connect and start background work; raises if the backend is unreachable."""

    async def stop(self) -> None:
        """Remove this worker's presence, stop background work, close connections."""

    async def publish(self, channel: str, payload: Any) -> None:
        """Deliver ``payload`` to every worker hearing ``channel``, stored first if the
        channel keeps history."""

    async def join(self, channel: str, connection_id: str, *, notify: bool) -> None:
        """Register a local connection (already in the sink's local truth)."""

    async def leave(self, channel: str, connection_id: str, *, notify: bool) -> None:
        """Unregister a connection (already gone from the sink's local truth)."""

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` read from the source of truth."""

    async def history(self, channel: str, since: str) -> HistorySlice:
        """What ``channel`` stored after stream id ``since``."""


def new_worker_id() -> str:
    """An id unique to this process across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
