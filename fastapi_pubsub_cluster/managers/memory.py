"""Single-process manager: membership and delivery without any network."""

from __future__ import annotations

import time
from typing import Any

from ..codec import OutgoingFrame, encode_payload, stored_message_frame
from ..connection import ClientConnection
from ..history import LocalHistory
from ..metrics import Metrics
from ..settings import PubSubSettings
from .base import ConnectionManager


class InMemoryConnectionManager(ConnectionManager):
    """The default manager: everything stays in this process.

    Use it for one worker, development and tests. With several workers, each has its own
    view: use :class:`~fastapi_pubsub_cluster.managers.redis.RedisConnectionManager`.
    """

    def __init__(self, settings: PubSubSettings, metrics: Metrics | None = None) -> None:
        super().__init__(settings, metrics)
        self._histories: dict[str, LocalHistory] = {}

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Close local sockets with 1001 and cancel background work."""
        await self._stop_local()

    async def _announce_join(self, connection: ClientConnection, notify: bool) -> None:
        self._apply_join(connection.channel, connection.id, notify)

    async def _announce_leave(self, connection: ClientConnection, notify: bool) -> None:
        self._apply_leave(connection.channel, connection.id, notify)
        if self._members.get(connection.channel) == set():
            del self._members[connection.channel]  # the last one left: forget the channel

    async def publish(self, channel: str, payload: Any) -> None:
        """Deliver ``payload`` to the channel's clients in this process."""
        self.settings.validate_channel_id(channel)
        # Check encodability and size once, as the Redis manager does before PUBLISH.
        self.settings.check_message_size(len(encode_payload(payload)))
        self.metrics.published()
        sent_at = time.time()
        if self.settings.has_history(channel):
            history = self._histories.get(channel)
            if history is None:
                history = LocalHistory(self.settings.history_size, self.settings.history_ttl)
                self._histories[channel] = history
            frame = stored_message_frame(history.append(payload), payload)
        else:
            frame = OutgoingFrame(payload)
        self._deliver(channel, frame, sent_at)

    async def _history_after(
        self, channel: str, since: str
    ) -> tuple[list[tuple[str, Any]], str | None, bool]:
        history = self._histories.get(channel)
        if history is None:
            return [], None, True
        return history.after(since)

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``."""
        return self.get(channel)
