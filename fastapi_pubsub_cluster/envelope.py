"""The envelope: one event on a channel as it crosses between workers (msgpack)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]

from .errors import MalformedMessageError
from .payloads import all_finite

ENVELOPE_VERSION = 1


class EventKind(StrEnum):
    """What an envelope on a channel's Redis topic carries."""

    MESSAGE = "m"  # a published payload for every client of the channel
    STORED = "h"  # the same, also kept in the channel's history; ref is its stream id
    JOIN = "j"  # a connection entered the channel
    LEAVE = "l"  # a connection left the channel
    DIRECT = "d"  # a payload for some connections of one worker (its inbox); no channel
    BATCH = "b"  # joins and leaves of one channel recorded together (see membership.py)


_KINDS = {kind.value: kind for kind in EventKind}
# On the wire only: a MESSAGE or STORED that skips one connection (``publish(exclude=)``);
# the payload travels as ``[excluded connection id, payload]``.
_EXCLUDING = {"x": EventKind.MESSAGE, "y": EventKind.STORED}
_EXCLUDING_CODES = {kind: code for code, kind in _EXCLUDING.items()}
_NUMBER = (int, float)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event on a channel, as it crosses Redis.

    Encoded as a msgpack array ``[version, kind, channel, origin, ref, seq, payload,
    sent_at]``: ``ref`` is the message id (MESSAGE), the stream id (STORED) or the
    connection id (JOIN/LEAVE); ``seq`` is the channel's membership sequence number (0 for
    messages); ``payload`` is the published object (messages) or whether clients should be
    notified (JOIN/LEAVE); ``sent_at`` is the publisher's clock in Unix seconds (0 for
    membership events), for the publish-to-delivery latency metric. ``exclude`` is a
    connection id a MESSAGE or STORED skips (sent as kind ``x``/``y`` with the payload
    ``[exclude, payload]``). A DIRECT envelope (a worker's inbox) has no channel; its
    payload is ``[[connection ids], payload]``.
    """

    kind: EventKind
    channel: str
    origin: str
    ref: str
    seq: int = 0
    payload: Any = None
    sent_at: float = 0.0
    exclude: str | None = None


def encode_envelope(envelope: Envelope) -> bytes:
    """Pack an envelope; raises :class:`MalformedMessageError` for payloads msgpack cannot
    hold and for floats JSON cannot carry (NaN, infinities)."""
    payload = encode_payload(envelope.payload)
    if envelope.exclude is not None:
        payload = excluding_payload(envelope.exclude, payload)
    # The same bytes as packing the eight-item array at once (fixarray 8, then each item),
    # with the payload's own bytes spliced in: the six head items in one pack call.
    return b"".join((b"\x98", _packed_head(envelope), payload, _packed(envelope.sent_at)))


def envelope_overhead(envelope: Envelope) -> int:
    """Bytes an encoded envelope adds to its payload's: size limits apply to the payload."""
    return 1 + len(_packed_head(envelope)) + len(_packed(envelope.sent_at))


def excluding_payload(exclude: str, payload: bytes) -> bytes:
    """The msgpack bytes of ``[exclude, payload]`` from the payload's own bytes."""
    return b"\x92" + _packed(exclude) + payload


def _packed_head(envelope: Envelope) -> bytes:
    kind = envelope.kind.value
    if envelope.exclude is not None:
        kind = _EXCLUDING_CODES.get(envelope.kind, kind)
    head = (ENVELOPE_VERSION, kind, envelope.channel, envelope.origin, envelope.ref, envelope.seq)
    try:
        return _packed(head)[1:]  # the items without their fixarray-6 header
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessageError(f"envelope cannot be encoded with msgpack: {exc}") from exc


def _packed(item: Any) -> bytes:
    return cast(bytes, msgpack.packb(item, use_bin_type=True))


def encode_payload(payload: Any) -> bytes:
    """msgpack bytes of a payload; MalformedMessageError if msgpack cannot hold it or it
    holds a float JSON cannot carry (NaN, infinities), so that no client ever gets one."""
    try:
        data = cast(bytes, msgpack.packb(payload, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessageError(f"payload cannot be encoded with msgpack: {exc}") from exc
    # Without a float64 marker byte there is no float at all: skip the walk.
    if b"\xcb" in data and not all_finite(payload):
        raise MalformedMessageError("payload holds NaN or an infinity, which JSON cannot carry")
    return data


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """Sort key of a Redis stream id ``"<ms>-<seq>"``; malformed ids sort first."""
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return -1, -1


def decode_envelope(data: bytes) -> Envelope:
    """Unpack an envelope; other bytes (a foreign publisher's) raise MalformedMessageError."""
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMessageError(f"not a msgpack envelope: {exc}") from exc
    if not isinstance(items, list) or len(items) != 8 or items[0] != ENVELOPE_VERSION:
        raise MalformedMessageError("not a version-1 envelope array of 8 items")
    _, kind, channel, origin, ref, seq, payload, sent_at = items
    exclude: str | None = None
    # Once per envelope, so each check is done once and builds nothing (no generator, no
    # tuple, no ``int | float`` union): one lookup for the usual kinds, a second for the
    # excluding ones.
    event_kind = _KINDS.get(kind) if isinstance(kind, str) else None
    if event_kind is None:
        event_kind = _EXCLUDING.get(kind) if isinstance(kind, str) else None
        if event_kind is None:
            raise MalformedMessageError(f"unknown envelope kind {kind!r}")
        if not isinstance(payload, list) or len(payload) != 2 or not isinstance(payload[0], str):
            raise MalformedMessageError("an excluding envelope's payload is not [id, payload]")
        exclude, payload = payload
    if not (
        isinstance(channel, str)
        and isinstance(origin, str)
        and isinstance(ref, str)
        and isinstance(seq, int)
    ):
        raise MalformedMessageError("envelope fields have the wrong types")
    if not isinstance(sent_at, _NUMBER):
        raise MalformedMessageError("envelope timestamp is not a number")
    if event_kind is EventKind.DIRECT and not _is_direct_payload(payload):
        raise MalformedMessageError("a direct envelope's payload is not [[ids], payload]")
    if event_kind is EventKind.BATCH and not _is_batch_payload(payload):
        raise MalformedMessageError("a batch envelope's payload is not [[kind, id, seq, x]...]")
    return Envelope(event_kind, channel, origin, ref, seq, payload, float(sent_at), exclude)


def _is_batch_payload(payload: Any) -> bool:
    return isinstance(payload, list) and all(
        isinstance(item, list)
        and len(item) == 4
        and item[0] in ("j", "l")
        and isinstance(item[1], str)
        and isinstance(item[2], int)
        for item in payload
    )


def _is_direct_payload(payload: Any) -> bool:
    return (
        isinstance(payload, list)
        and len(payload) == 2
        and isinstance(payload[0], list)
        and all(isinstance(i, str) for i in payload[0])
    )
