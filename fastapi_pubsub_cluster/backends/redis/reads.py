"""Who is in a channel, read from Redis."""

from __future__ import annotations

from typing import Any

from . import scripts
from .clients import CommandClient, metadata_of, text
from .keys import RedisKeys


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
