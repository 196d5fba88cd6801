"""One publication made ready for Redis, shared by the Redis manager and outside publishers."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from .codec import (
    Envelope,
    EventKind,
    encode_envelope,
    encode_payload,
    envelope_overhead,
    packed_timestamp,
    stored_envelope_head,
)
from .keys import RedisKeys
from .settings import PubSubSettings


@dataclass(frozen=True, slots=True)
class Publication:
    """A PUBLISH of ``data`` on ``topic``, or, for a channel with history (``stream_key``
    set), the STORE script with ``script_args``: append to the stream and announce."""

    topic: str
    data: bytes
    stream_key: str | None = None
    script_args: tuple[str | bytes | int, ...] = ()


def prepare_publication(
    settings: PubSubSettings,
    channel: str,
    payload: Any,
    *,
    origin: str,
    publish_command: str = "PUBLISH",
) -> Publication:
    """Validate, encode once and check the size; raises InvalidChannelError,
    MalformedMessageError or MessageTooLargeError."""
    settings.validate_channel_id(channel)
    keys = RedisKeys(settings.key_prefix)
    topic = keys.topic(channel)
    if not settings.has_history(channel):
        envelope = Envelope(
            EventKind.MESSAGE, channel, origin, uuid.uuid4().hex, 0, payload, time.time()
        )
        data = encode_envelope(envelope)
        settings.check_message_size(len(data) - envelope_overhead(envelope))
        return Publication(topic, data)
    data = encode_payload(payload)
    settings.check_message_size(len(data))
    args = (
        publish_command,
        topic,
        stored_envelope_head(channel, origin),
        data,
        settings.history_size,
        int(settings.history_ttl * 1000),
        packed_timestamp(time.time()),
    )
    return Publication(topic, data, keys.history(channel), args)
