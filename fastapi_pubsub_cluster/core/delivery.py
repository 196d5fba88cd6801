"""Handing a channel's frames to this worker's connections in it."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import MalformedMessageError
from ..frames import OutgoingFrame, event_frame
from ..metrics import Metrics
from ..settings import PubSubSettings
from .mirror import MembershipMirror
from .registry import LocalRegistry

logger = logging.getLogger("fastapi_pubsub_cluster")


class LocalDelivery:
    """Offers frames to the local connections of a channel, each in the shape it expects
    (plain on its own channel, tagged on further channels or when it asked for tags)."""

    def __init__(
        self,
        registry: LocalRegistry,
        mirror: MembershipMirror,
        settings: PubSubSettings,
        metrics: Metrics,
    ) -> None:
        self._local = registry
        self._mirror = mirror
        self._settings = settings
        self._metrics = metrics

    def to_channel(
        self, channel: str, frame: OutgoingFrame, sent_at: float = 0.0, exclude: str | None = None
    ) -> int:
        """Hand ``frame`` to every local client of ``channel`` but ``exclude``; returns how
        many took it."""
        conns = self._local.in_channel(channel)
        if not conns:
            return 0
        delivered = 0
        failed = False
        # A copy: a client that falls behind is removed while we iterate.
        for connection in list(conns.values()):
            if connection.id == exclude:
                continue
            try:
                if connection.channel == channel and not connection.tagged:
                    delivered += connection.offer(frame)
                else:  # a further channel, or a client that wants frames tagged
                    delivered += connection.offer_in(channel, frame)
            except MalformedMessageError as exc:
                # This client's wire format cannot carry the payload; others' may.
                if not failed:
                    logger.error("cannot deliver a message on %r: %s", channel, exc)
                    self._metrics.encoding_failed()
                failed = True
            except Exception:  # one client's failure never stops the others
                logger.exception("delivery to %s failed", connection.id)
        self._metrics.delivered(delivered, sent_at)
        return delivered

    def presence(self, channel: str) -> None:
        """Tell the tagged clients of ``channel`` its count (and members, while few)."""
        conns = self._local.in_channel(channel)
        tagged = [c for c in (conns or {}).values() if c.tagged or c.channel != channel]
        if not tagged:
            return
        members = self._mirror.get(channel)
        fields: dict[str, Any] = {"count": len(members)}
        if len(members) <= self._settings.presence_event_max_members:
            fields["members"] = self._mirror.presence(channel)
        state = f"presence:{channel}"  # a newer one replaces it in a client's queue
        frame = event_frame("presence", channel, state=state, **fields)
        counted: OutgoingFrame | None = None
        for connection in tagged:
            try:
                connection.send_event_in(channel, frame)
            except MalformedMessageError as exc:
                # Members' metadata this client's wire format cannot carry (from a worker
                # that did not check it): it still gets the count.
                if counted is None:
                    logger.error("presence of %r cannot be encoded: %s", channel, exc)
                    self._metrics.encoding_failed()
                    counted = event_frame("presence", channel, state=state, count=len(members))
                connection.send_event_in(channel, counted)
            except Exception:  # one client's failure never stops the others
                logger.exception("presence event to %s failed", connection.id)
