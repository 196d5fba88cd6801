"""The client's side of the protocol (docs/client-protocol.md) without I/O: the URL to
connect to, what each frame the server sends means, and the state that outlives a
connection (where each history channel resumes, which further channels to join again)."""

from __future__ import annotations

import json
import logging
import random
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import msgpack  # type: ignore[import-untyped]

from .events import (
    Direct,
    Event,
    Gap,
    Joined,
    Left,
    Message,
    Opened,
    Presence,
    Refused,
    ServerEvent,
    WireFormat,
    stream_id_key,
)

logger = logging.getLogger("fastapi_pubsub_cluster.remote")

#: Why a join fails where the server's socket class sets no ``client_joins``.
NO_CLIENT_JOINS = "this server's socket does not take joins from clients"
#: The close code for "not authorized", "invalid channel id", and for slow clients.
POLICY_VIOLATION = 1008
#: The code reported for a connection that failed before or without a close frame.
ABNORMAL_CLOSURE = 1006
#: The code reported for a connection that was not welcomed in time.
CONNECT_TIMEOUT_CODE = 4000
#: A refusal that asks to come back later (an address cooling down after flooding).
_TRY_AGAIN_IN = re.compile(r"try again in (\d+(?:\.\d+)?) s")


def full_jitter(attempt: int, first: float, cap: float) -> float:
    """A reconnect delay: at random below a cap that doubles from ``first`` up to ``cap``."""
    return random.uniform(0, min(cap, first * 2 ** min(attempt, 30)))


def encode(data: Any, wire_format: WireFormat) -> str | bytes:
    """A client message as the frame that carries it."""
    if wire_format == "msgpack":
        return bytes(msgpack.packb(data, use_bin_type=True))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def decode(frame: str | bytes) -> Any:
    """A frame from the server: text is JSON, binary is msgpack."""
    if isinstance(frame, str):
        return json.loads(frame)
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def handshake_refusal(status: int) -> tuple[int, str]:
    """The close code and reason an HTTP answer to the handshake counts as: a 4xx is as the
    server's own refusals before its welcome (asking again won't help), the rest drops."""
    if 400 <= status < 500 and status not in (408, 429):
        return POLICY_VIOLATION, f"HTTP {status}"
    return ABNORMAL_CLOSURE, f"HTTP {status}"


def _newer(stream_id: str, last: str | None) -> bool:
    if last is None:
        return True
    try:
        return stream_id_key(stream_id) > stream_id_key(last)
    except ValueError:  # a resume position the server will refuse anyway
        return True


class Session:
    """One client's protocol state across its connections."""

    def __init__(self, url: str, wire_format: WireFormat | None = None) -> None:
        parts = urlsplit(url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if scheme not in ("ws", "wss"):
            raise ValueError(f"a client URL is ws://, wss://, http:// or https://, not {url!r}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self._parts = parts._replace(scheme=scheme)
        self._query = {k: v for k, v in query.items() if k not in ("frames", "format", "since")}
        asked = wire_format or query.get("format")
        self.wire_format: WireFormat = "msgpack" if asked == "msgpack" else "json"
        #: The own channel: the URL's last segment until the server's welcome names it.
        self.channel = unquote(parts.path.rstrip("/").rpartition("/")[2])
        #: The newest stream id seen, per history channel.
        self.last_ids: dict[str, str] = {}
        if query.get("since"):
            self.last_ids[self.channel] = query["since"]
        #: Further channels to be in, joined again after every reconnect (in join order).
        self.wanted: dict[str, None] = {}
        #: Whether the server takes joins (its welcome says); None before the first welcome.
        self.client_joins: bool | None = None
        self.connection_id: str | None = None
        self.welcomed = False
        self.opened_before = False
        #: Seconds the server asked to wait before connecting again (0: none).
        self.retry_after = 0.0
        self._asked_since: str | None = None

    @property
    def channels(self) -> list[str]:
        """The own channel first, then the further ones."""
        return [self.channel, *self.wanted]

    def connect_url(self) -> str:
        """The URL of the next connection: tagged frames, the format, and where to resume."""
        query = {**self._query, "frames": "tagged", "format": self.wire_format}
        self._asked_since = self.last_ids.get(self.channel)
        if self._asked_since is not None:
            query["since"] = self._asked_since
        self.welcomed = False
        self.connection_id = None
        return urlunsplit(self._parts._replace(query=urlencode(query)))

    def join_request(self, channel: str) -> dict[str, str]:
        """The message that joins ``channel``, resuming after the last id seen there."""
        since = self.last_ids.get(channel)
        return {"join": channel, "since": since} if since else {"join": channel}

    def rejoin_requests(self) -> list[dict[str, str]]:
        """What to send once welcomed: a join of every further channel."""
        return [self.join_request(channel) for channel in self.wanted] if self.client_joins else []

    def receive(self, frame: str | bytes) -> list[Event]:
        """What a frame from the server means (nothing, logged, if it does not decode)."""
        try:
            decoded = decode(frame)
        except ValueError as exc:  # JSON's and msgpack's errors alike
            logger.error("an undecodable frame from the server: %s", exc)
            return []
        return self.handle(decoded)

    def handle(self, frame: Any) -> list[Event]:
        """What a frame from the server means, in order."""
        if not isinstance(frame, dict):
            return [Direct(frame)]
        channel = frame.get("channel")
        event = frame.get("event")
        if event is None:
            return self._channel_frame(frame, channel)
        if event == "welcome":
            return self._welcome(frame)
        if not isinstance(channel, str):
            return [ServerEvent(str(event), frame)]
        if event == "joined":
            self._start_at(channel, frame.get("last_id"))
            return [Joined(channel)]
        if event == "left":
            self.last_ids.pop(channel, None)
            return [Left(channel)]
        if event == "refused":
            retry = bool(frame.get("retry")) and channel in self.wanted
            if not retry:
                self.wanted.pop(channel, None)
            return [Refused(channel, str(frame.get("reason") or "refused"), retry)]
        if event == "presence":
            return [Presence(channel, int(frame.get("count", 0)), frame.get("members"))]
        return [ServerEvent(str(event), frame)]

    def closed(self, code: int, reason: str) -> tuple[list[Event], bool]:
        """A connection ended: what that means, and whether it was refused for good.
        (:attr:`retry_after`: seconds the server asked to wait before the next attempt.)"""
        was_welcomed, self.welcomed = self.welcomed, False
        self.connection_id = None
        cooling = _TRY_AGAIN_IN.search(reason)
        self.retry_after = float(cooling.group(1)) if cooling is not None else 0.0
        if code != POLICY_VIOLATION or was_welcomed or cooling is not None:
            return [], False
        since = self._asked_since
        if since is None:
            return [], True  # not authorized, an invalid channel: asking again changes nothing
        # Refused with a resume position: asking again with it would be refused forever.
        # Report the gap and come back without it.
        self.last_ids.pop(self.channel, None)
        return [Gap(self.channel, since, None, reason)], False

    def refuse_locally(self, channel: str) -> Refused:
        """A join refused without asking: the server's welcome said it takes none."""
        self.wanted.pop(channel, None)
        return Refused(channel, NO_CLIENT_JOINS, False)

    def _welcome(self, frame: dict[str, Any]) -> list[Event]:
        resumed, self.opened_before = self.opened_before, True
        self.welcomed = True
        self.connection_id = str(frame.get("connection_id", ""))
        if isinstance(frame.get("channel"), str):
            self.channel = frame["channel"]
        self._start_at(self.channel, frame.get("last_id"))
        self.client_joins = frame.get("client_joins") is not False  # older servers took joins
        events: list[Event] = [Opened(self.connection_id, self.channel, resumed)]
        if not self.client_joins:
            events.extend(self.refuse_locally(channel) for channel in list(self.wanted))
        return events

    def _channel_frame(self, frame: dict[str, Any], channel: Any) -> list[Event]:
        if isinstance(channel, str) and isinstance(frame.get("history_gap"), dict):
            gap = frame["history_gap"]
            return [Gap(channel, gap.get("since"), gap.get("oldest"))]
        if isinstance(channel, str) and "data" in frame:
            stream_id = frame.get("id")
            if isinstance(stream_id, str):
                if not _newer(stream_id, self.last_ids.get(channel)):
                    return []  # seen already (a replay overlapping what arrived live)
                self.last_ids[channel] = stream_id
            else:
                stream_id = None
            return [Message(channel, frame["data"], stream_id)]
        if channel is None and frame.keys() == {"data"}:
            return [Direct(frame["data"])]  # hub.send_to / send_to_user
        return [Direct(frame)]  # what the app sent with send_json, as given

    def _start_at(self, channel: str, last_id: Any) -> None:
        # The server says where a history channel's messages start, so that a client that
        # saw no message yet still resumes without a gap.
        if isinstance(last_id, str) and channel not in self.last_ids:
            self.last_ids[channel] = last_id
