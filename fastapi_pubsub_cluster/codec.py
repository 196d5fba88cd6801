"""Wire formats: the msgpack envelope between workers and the frames sent to clients."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]

from .errors import MalformedMessageError
from .payloads import MAX_NESTING_DEPTH as MAX_NESTING_DEPTH
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


def stored_envelope_head(channel: str, origin: str, *, excluding: bool = False) -> bytes:
    """The first four items of a STORED envelope, with the array header for all eight.

    Redis appends the stream id, the sequence, the payload bytes and ``sent_at`` inside the
    script that stores the message, so that the id it announces is the id it stored.
    """
    head = b"".join(
        cast(bytes, msgpack.packb(item, use_bin_type=True))
        for item in (
            ENVELOPE_VERSION,
            "y" if excluding else EventKind.STORED.value,
            channel,
            origin,
        )
    )
    return b"\x98" + head  # fixarray of 8


def packed_timestamp(seconds: float) -> bytes:
    """``sent_at`` as msgpack bytes, for the store script to append."""
    return cast(bytes, msgpack.packb(float(seconds)))


def decode_stored(fields: dict[Any, Any]) -> Any:
    """The payload of a stream entry written by the STORE script (field ``p``)."""
    raw = fields.get(b"p", fields.get("p"))
    if not isinstance(raw, bytes):
        raise MalformedMessageError("stream entry has no payload field")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMessageError(f"stream entry payload is not msgpack: {exc}") from exc


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


class OutgoingFrame:
    """A payload for many clients, encoded at most once per wire format.

    ``stream_id`` is set for messages of a channel with history: the id a client sends
    back to resume after it, and what replay uses to avoid duplicates. ``state`` is set for
    frames that carry state rather than an event (a channel's count, its presence): a
    client's queue keeps only the newest pending frame of each state.
    """

    __slots__ = (
        "_asgi_binary",
        "_asgi_text",
        "_binary",
        "_tagged",
        "_text",
        "framed",
        "payload",
        "state",
        "stream_id",
        "wire_binary",
        "wire_text",
    )

    def __init__(
        self,
        payload: Any,
        stream_id: str | None = None,
        *,
        framed: bool = False,
        state: str | None = None,
    ) -> None:
        self.payload = payload
        self.stream_id = stream_id
        self.state = state
        #: True when ``payload`` is the library's own frame object (a stored message, a
        #: history gap), whose keys a tagged frame extends instead of wrapping it.
        self.framed = framed
        self._tagged: OutgoingFrame | None = None
        self._asgi_text: dict[str, Any] | None = None
        self._asgi_binary: dict[str, Any] | None = None
        #: The payload as whole WebSocket frames, cached by a server integration that
        #: writes frames itself (``uvicorn_ws``), so that each is framed once.
        self.wire_text: bytes | None = None
        self.wire_binary: bytes | None = None
        self._text: str | None = None
        self._binary: bytes | None = None

    @property
    def text(self) -> str:
        """The payload as compact JSON (encoded on first use)."""
        if self._text is None:
            self._text = encode_json(self.payload)
        return self._text

    @property
    def binary(self) -> bytes:
        """The payload as msgpack (encoded on first use)."""
        if self._binary is None:
            try:
                self._binary = cast(bytes, msgpack.packb(self.payload, use_bin_type=True))
            except (TypeError, ValueError, OverflowError) as exc:
                raise MalformedMessageError(
                    f"payload cannot be encoded with msgpack: {exc}"
                ) from exc
        return self._binary

    def asgi_message(self, text: bool) -> dict[str, Any]:
        """The ASGI ``websocket.send`` message of this frame (text or binary), built once
        and shared by every socket it is sent to (servers only read it)."""
        if text:
            if self._asgi_text is None:
                self._asgi_text = {"type": "websocket.send", "text": self.text}
            return self._asgi_text
        if self._asgi_binary is None:
            self._asgi_binary = {"type": "websocket.send", "bytes": self.binary}
        return self._asgi_binary

    def tagged(self, channel: str | None) -> OutgoingFrame:
        """This frame as a tagged socket receives it (``{"channel": c, "data": ...}``; a
        targeted send, with no channel, as ``{"data": ...}``); built once per frame, so a
        broadcast is still encoded once per wire format."""
        tagged = self._tagged
        if tagged is None or tagged.payload.get("channel") != channel:
            head = {"channel": channel} if channel is not None else {}
            body = self.payload if self.framed else {"data": self.payload}
            tagged = self._tagged = OutgoingFrame(
                {**head, **body}, self.stream_id, framed=True, state=self.state
            )
        return tagged


def event_frame(
    event: str, channel: str, *, state: str | None = None, **fields: Any
) -> OutgoingFrame:
    """A control frame for tagged sockets: ``{"event": ..., "channel": ..., **fields}``."""
    return OutgoingFrame({"event": event, "channel": channel, **fields}, state=state)


def _json_bytes(value: Any) -> Any:
    # JSON has no bytes (msgpack does): JSON clients get them as {"$bytes": "<base64>"}.
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: One encoder for every frame: ``json.dumps`` with options builds a new one per call.
_JSON = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_bytes
)


def encode_json(payload: Any) -> str:
    """Strict compact JSON, with bytes as ``{"$bytes": "<base64>"}``: NaN and infinities
    are not JSON (browsers' ``JSON.parse`` rejects them) and raise MalformedMessageError,
    as does nesting too deep to encode."""
    try:
        return _JSON.encode(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedMessageError(f"payload cannot be encoded as JSON: {exc}") from exc


def stored_message_frame(stream_id: str, payload: Any) -> OutgoingFrame:
    """What a client of a channel with history receives: ``{"id": ..., "data": ...}``."""
    return OutgoingFrame({"id": stream_id, "data": payload}, stream_id=stream_id, framed=True)


def history_gap_frame(since: str, oldest: str | None) -> OutgoingFrame:
    """Tells a resuming client that history no longer reaches back to ``since``."""
    return OutgoingFrame({"history_gap": {"since": since, "oldest": oldest}}, framed=True)
