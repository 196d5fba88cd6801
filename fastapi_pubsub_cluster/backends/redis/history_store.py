"""The Redis backend's history store: what history channels' streams hold, read by the
store itself (the publish path's STORE script appends to them)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...core.backend import HistorySlice
from ...envelope import stream_id_order
from ...errors import HistoryError, MalformedMessageError, describe
from ...settings import PubSubSettings
from . import scripts
from .clients import REDIS_DOWN, CommandClient, text
from .keys import RedisKeys
from .scripts import decode_stored

logger = logging.getLogger("fastapi_pubsub_cluster")


class RedisHistoryStore:
    """Reads the stream of each history channel (the publish path appends to it)."""

    def __init__(
        self,
        client: Callable[[], CommandClient],
        resume_points: Callable[[], ResumePoints],
        keys: RedisKeys,
    ) -> None:
        # Both raise HubClosedError while the backend is not started.
        self._client = client
        self._resume_points = resume_points
        self._keys = keys

    async def history(self, channel: str, since: str) -> HistorySlice:
        """What ``channel``'s stream holds after ``since``."""
        try:
            return await read_history(self._client(), self._keys.history(channel), since)
        except REDIS_DOWN as exc:
            raise HistoryError(f"cannot read history, Redis unavailable: {describe(exc)}") from exc

    async def last_stored_id(self, channel: str) -> str:
        """The id of the newest entry of ``channel``'s stream; on an empty channel, a
        position its stream vouches for from now on."""
        try:
            return await self._resume_points().at(self._keys.history(channel))
        except REDIS_DOWN as exc:
            raise HistoryError(f"cannot read history, Redis unavailable: {describe(exc)}") from exc


class ResumePoints:
    """Where clients joining a channel with history start (see ``scripts.RESUME_POINT``)."""

    def __init__(self, client: CommandClient, settings: PubSubSettings) -> None:
        self._script = client.register_script(scripts.RESUME_POINT)
        self._settings = settings

    async def at(self, key: str) -> str:
        """The id of the newest entry of the stream at ``key``; on an empty channel, a
        position the stream vouches for from now on."""
        ttl_ms = int(self._settings.history_ttl * 1000)
        return text(await self._script(keys=[key], args=[ttl_ms]))


async def read_history(client: CommandClient, key: str, since: str) -> HistorySlice:
    """What the stream at ``key`` holds after ``since``, and whether it reaches back there."""
    entries = await client.xrange(key, min=f"({since}", max="+")
    info = await client.xinfo_stream(key) if entries or await client.exists(key) else None
    replay = []
    for stream_id, fields in entries or []:
        try:
            replay.append((text(stream_id or b""), decode_stored(fields or {})))
        except MalformedMessageError as exc:
            logger.warning("skipped history entry %r of %s: %s", stream_id, key, exc)
    if info is None:
        return HistorySlice(replay, None, False)  # expired or never written: no vouching
    first = info.get("first-entry")
    oldest = text(first[0]) if first else None
    # Trimming removes the oldest entries, and the stream does not record their ids: the
    # history reaches back to ``since`` if nothing was ever removed, or if ``since`` is
    # still kept. (A ``since`` that was itself trimmed counts as a gap: safe, as the
    # client then resyncs.) A stream (re)created by the scripts records its floor as
    # max-deleted-entry-id: a ``since`` below it predates this stream, which then cannot
    # vouch for what came after it (Redis lost the stream it was an id of). ``0-0`` asks
    # for everything kept, which no floor can make incomplete: only trimming does.
    trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    max_deleted = text(info.get("max-deleted-entry-id") or b"0-0")
    reaches_back = not trimmed or (
        oldest is not None and stream_id_order(oldest) <= stream_id_order(since)
    )
    since_order = stream_id_order(since)
    complete = reaches_back and (
        since_order == (0, 0) or stream_id_order(max_deleted) <= since_order
    )
    return HistorySlice(replay, oldest, complete)
