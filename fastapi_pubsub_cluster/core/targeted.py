"""Targeted sends: to one connection, or to every connection of a user, on any worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from ..envelope import encode_payload
from ..frames import OutgoingFrame
from ..metrics import Metrics
from ..settings import PubSubSettings
from .backend import PresenceStore, Transport
from .registry import LocalRegistry

logger = logging.getLogger("fastapi_pubsub_cluster")


def worker_of(connection_id: str) -> str:
    """The id of the worker that holds ``connection_id`` (ids start with it); "" if none."""
    return connection_id.rpartition(":")[0]


class TargetedSender:
    """Delivers to this worker's connections by id at once, and hands the others to the
    transport, one DIRECT envelope per worker (its inbox)."""

    def __init__(
        self,
        registry: LocalRegistry,
        transport: Transport,
        presence: PresenceStore,
        settings: PubSubSettings,
        metrics: Metrics,
    ) -> None:
        self._local = registry
        self._transport = transport
        self._presence = presence
        self._settings = settings
        self._metrics = metrics

    async def send_to(self, connection_id: str, payload: Any) -> int:
        """Send ``payload`` to one connection on whatever worker holds it; how many
        sockets took it (0 for an unknown or absent connection: no error)."""
        self._settings.check_message_size(len(encode_payload(payload)))
        worker_id = worker_of(connection_id)
        if worker_id == self._transport.worker_id:
            return self.deliver([connection_id], OutgoingFrame(payload))
        if not worker_id:
            return 0
        return await self._transport.send(worker_id, [connection_id], payload)

    async def send_to_user(self, user_id: str, payload: Any) -> int:
        """Send ``payload`` to every connection of ``user_id`` on every worker; how many
        sockets took it (0 if the user has none)."""
        self._settings.check_message_size(len(encode_payload(payload)))
        by_worker: dict[str, list[str]] = {}
        for connection_id in await self._presence.user_connections(user_id):
            by_worker.setdefault(worker_of(connection_id), []).append(connection_id)
        by_worker.pop(self._transport.worker_id, None)  # this worker's own index is exact
        by_worker.pop("", None)
        local = [c.id for c in self._local.of_user(user_id)]
        delivered = self.deliver(local, OutgoingFrame(payload)) if local else 0
        sent = await asyncio.gather(
            *(self._transport.send(w, ids, payload) for w, ids in by_worker.items())
        )
        return delivered + sum(sent)

    def deliver(self, connection_ids: Collection[str], frame: OutgoingFrame) -> int:
        """Hand ``frame`` to those of ``connection_ids`` this worker holds; how many took it."""
        delivered = 0
        for connection_id in connection_ids:
            connection = self._local.by_id(connection_id)
            if connection is None:
                continue
            try:
                # A tagged client tells targeted sends by their lack of a channel.
                delivered += connection.offer(frame.tagged(None) if connection.tagged else frame)
            except Exception as exc:  # e.g. a payload its wire format cannot carry
                logger.error("targeted send to %s failed: %r", connection_id, exc)
        self._metrics.delivered(delivered, 0.0)
        return delivered
