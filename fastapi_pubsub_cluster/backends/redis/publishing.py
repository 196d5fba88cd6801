"""The one path by which a publication reaches Redis, for workers and outside publishers."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ...codec import (
    Envelope,
    EventKind,
    encode_envelope,
    encode_payload,
    envelope_overhead,
    packed_timestamp,
    stored_envelope_head,
)
from ...errors import PublishError
from ...settings import PubSubSettings
from . import scripts
from .clients import REDIS_DOWN, CommandClient, RedisEndpoint
from .keys import RedisKeys


@dataclass(frozen=True, slots=True)
class Publication:
    """A PUBLISH of ``data`` on ``topic``, or, for a channel with history (``script_keys``
    set), the store script with ``script_args``: append to the stream and announce.

    Either carries a publication id, so that a retry (a command that timed out may have
    run) is neither stored nor delivered twice.
    """

    channel: str
    topic: str
    data: bytes
    script_keys: tuple[str, ...] = ()
    script_args: tuple[str | bytes | int, ...] = ()


class PublishPath:
    """Validates, encodes once, and sends: PUBLISH, SPUBLISH on a cluster, or the store
    script for a channel with history, within twice ``redis_timeout``."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        client: CommandClient,
        settings: PubSubSettings,
        *,
        origin: str,
    ) -> None:
        self._endpoint = endpoint
        self._client = client
        self._settings = settings
        self._keys = RedisKeys(settings.key_prefix)
        self._origin = origin
        self._store = client.register_script(scripts.STORE)

    def prepare(self, channel: str, payload: Any) -> Publication:
        """Validate and encode; raises InvalidChannelError, MalformedMessageError or
        MessageTooLargeError."""
        settings = self._settings
        settings.validate_channel_id(channel)
        topic = self._keys.topic(channel)
        publication_id = uuid.uuid4().hex
        if not settings.has_history(channel):
            envelope = Envelope(
                EventKind.MESSAGE, channel, self._origin, publication_id, 0, payload, time.time()
            )
            data = encode_envelope(envelope)
            # The limit applies to the payload, not to the envelope around it.
            settings.check_message_size(len(data) - envelope_overhead(envelope))
            return Publication(channel, topic, data)
        data = encode_payload(payload)
        settings.check_message_size(len(data))
        args = (
            self._endpoint.publish_command,
            topic,
            stored_envelope_head(channel, self._origin),
            data,
            settings.history_size,
            int(settings.history_ttl * 1000),
            packed_timestamp(time.time()),
            publication_id,
            scripts.STORED_IDS_WINDOW_MS,
        )
        keys = (self._keys.history(channel), self._keys.stored_ids(channel))
        return Publication(channel, topic, data, keys, args)

    async def send(self, publication: Publication) -> int:
        """Hand ``publication`` to Redis; how many workers heard it. Raises
        :class:`~fastapi_pubsub_cluster.errors.PublishError` within the time limit."""
        try:
            async with asyncio.timeout(self._settings.redis_timeout * 2):
                if not publication.script_keys:
                    return await self._endpoint.publish_raw(
                        self._client, publication.topic, publication.data
                    )
                _, receivers = await self._store(
                    keys=publication.script_keys, args=publication.script_args
                )
                return int(receivers)
        except REDIS_DOWN as exc:
            raise PublishError(
                f"cannot publish to {publication.channel!r}, Redis unavailable: {exc!r}"
            ) from exc

    async def publish(self, channel: str, payload: Any) -> int:
        """:meth:`prepare` and :meth:`send`."""
        return await self.send(self.prepare(channel, payload))
