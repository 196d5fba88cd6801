"""Frames: what clients receive, encoded at most once per wire format (JSON or msgpack)."""

from __future__ import annotations

import base64
import json
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]

from .errors import MalformedMessageError


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
