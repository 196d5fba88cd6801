"""The Redis backend's history store: what history channels' streams hold."""

from __future__ import annotations

from ...core.backend import HistorySlice
from ...errors import HistoryError, describe
from .clients import REDIS_DOWN
from .history import read_history
from .keys import RedisKeys
from .runtime import Running


class RedisHistoryStore:
    """Reads the stream of each history channel (the publish path appends to it)."""

    def __init__(self, running: Running, keys: RedisKeys) -> None:
        self._running = running
        self._keys = keys

    async def history(self, channel: str, since: str) -> HistorySlice:
        """What ``channel``'s stream holds after ``since``."""
        try:
            return await read_history(self._running().client, self._keys.history(channel), since)
        except REDIS_DOWN as exc:
            raise HistoryError(f"cannot read history, Redis unavailable: {describe(exc)}") from exc

    async def last_stored_id(self, channel: str) -> str:
        """The id of the newest entry of ``channel``'s stream; on an empty channel, a
        position its stream vouches for from now on."""
        try:
            return await self._running().resume_points.at(self._keys.history(channel))
        except REDIS_DOWN as exc:
            raise HistoryError(f"cannot read history, Redis unavailable: {describe(exc)}") from exc
