"""What a socket sees of the cluster's channels: read-only, under the original package's
name (``self.connection_manager``)."""

from __future__ import annotations

from typing import Any, Protocol

from .mirror import MembershipMirror


class PresenceReader(Protocol):
    """Reads presence from its source of truth (a backend's presence store)."""

    async def members(self, channel: str) -> frozenset[str]: ...

    async def presence(self, channel: str) -> dict[str, Any]: ...


class ChannelView:
    """Who is in which channel, cluster-wide; it changes nothing.

    ``get`` and ``presence_of`` read this worker's mirror (synchronous, no I/O, trailing
    the source of truth by the backend's latency); ``members``, ``count`` and ``presence``
    read the source of truth.
    """

    __slots__ = ("_mirror", "_source")

    def __init__(self, mirror: MembershipMirror, source: PresenceReader) -> None:
        self._mirror = mirror
        self._source = source

    def get(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` on every worker, from this worker's mirror.

        Synchronous, as in the original package: ``len(manager.get(channel))`` is the
        cluster-wide count.
        """
        return self._mirror.get(channel)

    def presence_of(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel`` on every
        worker, from this worker's mirror (no I/O)."""
        return self._mirror.presence(channel)

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` read from the source of truth."""
        return await self._source.members(channel)

    async def count(self, channel: str) -> int:
        """Number of connections in ``channel`` read from the source of truth."""
        return len(await self._source.members(channel))

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``, read from the
        source of truth."""
        return await self._source.presence(channel)
