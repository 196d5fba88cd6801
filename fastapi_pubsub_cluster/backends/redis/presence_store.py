"""The Redis backend's presence store: registering connections, reading who is where."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import PresenceError, describe
from .clients import REDIS_DOWN
from .runtime import RedisRuntime, Running


class RedisPresenceStore:
    """Connections in Redis sets, one per channel; users' connections in the directory.

    (Its heartbeat, reconciliation and reaping run in :class:`~.presence.Presence`.)
    """

    def __init__(self, running: Running, stopped: Callable[[], RedisRuntime | None]) -> None:
        self._running = running
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
        presence = self._running().presence
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
        runtime = self._stopped()
        if runtime is None:
            return  # stopped: the whole presence of this worker is gone already
        user_id = self._user_of.pop(connection_id, None) if directory else None
        await runtime.presence.unregister(
            channel, connection_id, notify=notify, user_id=user_id, directory=directory
        )

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``, read from Redis."""
        try:
            return await self._running().presence.reads.members(channel)
        except REDIS_DOWN as exc:
            raise PresenceError(
                f"cannot read presence, Redis unavailable: {describe(exc)}"
            ) from exc

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``, from Redis."""
        try:
            return await self._running().presence.reads.presence(channel)
        except REDIS_DOWN as exc:
            raise PresenceError(
                f"cannot read presence, Redis unavailable: {describe(exc)}"
            ) from exc

    async def user_connections(self, user_id: str) -> frozenset[str]:
        """Ids of ``user_id``'s connections on every worker, from Redis."""
        try:
            return await self._running().presence.directory.user_connections(user_id)
        except REDIS_DOWN as exc:
            raise PresenceError(
                f"cannot read presence, Redis unavailable: {describe(exc)}"
            ) from exc
