"""Joins and leaves as they cross between workers: one event per connection (JOIN, LEAVE),
or the joins and leaves of one channel that were recorded together (BATCH).

A batch is what a storm looks like on the wire: thousands of sockets arriving at once are
registered in a few round trips, each announced as one envelope whose payload lists
``[kind, connection id, sequence number, payload]`` per change, in the order Redis recorded
them. A receiver expands it into the single events it stands for and applies them at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .envelope import Envelope, EventKind
from .frames import encode_json

_KINDS = {"j": EventKind.JOIN, "l": EventKind.LEAVE}


def expand_batch(batch: Envelope) -> list[Envelope]:
    """The JOIN and LEAVE events a BATCH envelope (decoded, so well-formed) stands for."""
    return [
        Envelope(_KINDS[kind], batch.channel, batch.origin, ref, seq, payload)
        for kind, ref, seq, payload in batch.payload
    ]


def membership_payload(notify: bool, metadata: Mapping[str, Any] | None) -> Any:
    """A JOIN or LEAVE envelope's payload: whether to notify clients, with the connection's
    presence metadata when it has some (``[notify, metadata as JSON text]``)."""
    if metadata is None:
        return notify
    return [notify, encode_json(dict(metadata))]


def membership_notify(payload: Any) -> bool:
    """Whether a JOIN or LEAVE envelope asks to notify clients."""
    return bool(payload[0] if isinstance(payload, list) and payload else payload)


def membership_metadata(payload: Any) -> Any:
    """The presence metadata a JOIN or LEAVE envelope carries (None without)."""
    if isinstance(payload, list) and len(payload) == 2 and isinstance(payload[1], str):
        try:
            return json.loads(payload[1])
        except ValueError:
            return None
    return None
