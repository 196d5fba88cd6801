"""The Redis backend's presence store: registering connections, and reading who is where
(the store's own reads)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import PresenceError, describe
from . import scripts
from .clients import REDIS_DOWN, CommandClient, metadata_of, text
from .keys import RedisKeys
from .presence import Presence


class RedisPresenceStore:
    """Connections in Redis sets, one per channel; users' connections in the directory.

    (Its heartbeat, reconciliation and reaping run in :class:`~.upkeep.PresenceUpkeep`.)
    ``presence`` and ``reads`` raise HubClosedError while the backend is not started;
    ``stopped`` is None then.
    """

    def __init__(
        self,
        presence: Callable[[], Presence],
        reads: Callable[[], ChannelReads],
        stopped: Callable[[], Presence | None],
    ) -> None:
        self._presence = presence
        self._reads = reads
        self._stopped = stopped
        # The user of each local connection that has one (to remove it from the directory).
        self._user_of: dict[str, str] = {}

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
        """Register the connection in the channel (with ``directory``, in the directory too),
        announced on the channel's topic; in the next batch of joins and leaves. Raises
        PresenceError if Redis does not answer."""
        presence = self._presence()
        if directory and user_id is not None:
            self._user_of[connection_id] = user_id
        await presence.register(
            channel,
            connection_id,
            notify=notify,
            metadata=metadata,
            user_id=user_id,
            directory=directory,
        )

    async def leave(
        self, channel: str, connection_id: str, *, notify: bool, directory: bool = True
    ) -> None:
        """Unregister the connection (retried later if Redis does not answer)."""
        presence = self._stopped()
        if presence is None:
            return  # stopped: the whole presence of this worker is gone already
        user_id = self._user_of.pop(connection_id, None) if directory else None
        await presence.unregister(
            channel, connection_id, notify=notify, user_id=user_id, directory=directory
        )

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``, read from Redis."""
        try:
            return await self._reads().members(channel)
        except REDIS_DOWN as exc:
            raise PresenceError(
                f"cannot read presence, Redis unavailable: {describe(exc)}"
            ) from exc

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``, from Redis."""
        try:
            return await self._reads().presence(channel)
        except REDIS_DOWN as exc:
            raise PresenceError(
                f"cannot read presence, Redis unavailable: {describe(exc)}"
            ) from exc

    async def user_connections(self, user_id: str) -> frozenset[str]:
        """Ids of ``user_id``'s connections on every worker, from Redis."""
        try:
            return await self._presence().directory.user_connections(user_id)
        except REDIS_DOWN as exc:
            raise PresenceError(
                f"cannot read presence, Redis unavailable: {describe(exc)}"
            ) from exc


class ChannelReads:
    """Reads a channel's members, metadata and membership sequence number from Redis."""

    def __init__(self, client: CommandClient, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys
        self._snapshot = client.register_script(scripts.SNAPSHOT)

    async def snapshot(self, channel: str) -> tuple[frozenset[str], int, dict[str, Any]]:
        """The members of ``channel``, its sequence number and its members' metadata, read
        at one instant."""
        keys = self._keys
        raw_members, raw_seq, raw_meta = await self._snapshot(
            keys=[keys.members(channel), keys.seq(channel), keys.meta(channel)]
        )
        return frozenset(text(m) for m in raw_members), int(raw_seq or 0), metadata_of(raw_meta)

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> metadata (None without) in ``channel``."""
        members, _, metadata = await self.snapshot(channel)
        return {member: metadata.get(member) for member in members}

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``."""
        return frozenset(text(m) for m in await self._client.smembers(self._keys.members(channel)))
