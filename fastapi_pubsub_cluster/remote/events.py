"""What a :class:`~fastapi_pubsub_cluster.remote.PubSubClient` reports, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeAlias

from ..errors import PubSubError

#: The wire format of every frame, both ways.
WireFormat: TypeAlias = Literal["json", "msgpack"]


class ClientState(StrEnum):
    """Where a client is in its life."""

    CONNECTING = "connecting"  # before its first welcome
    OPEN = "open"  # welcomed on the current connection
    RECONNECTING = "reconnecting"  # between connections
    CLOSED = "closed"  # closed by its owner, or refused for good


@dataclass(frozen=True, slots=True)
class Message:
    """A message published to ``channel``; ``id`` is its stream id on a history channel."""

    channel: str
    data: Any
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A resume reached back further than ``channel``'s history (``oldest`` is the oldest id
    still kept), or the server refused the resume position (``reason``): what was published
    between ``since`` and the next message is not coming; resync from your own source."""

    channel: str
    since: str | None
    oldest: str | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is in ``channel`` after joins and leaves; ``members`` only for small channels."""

    channel: str
    count: int
    members: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Direct:
    """A frame for this client alone: ``hub.send_to``/``send_to_user``, or the app's own
    ``send_json`` (as given)."""

    data: Any


@dataclass(frozen=True, slots=True)
class Opened:
    """A connection was welcomed; ``resumed`` for every connection after the first."""

    connection_id: str
    channel: str
    resumed: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection ended (or failed to open, ``code`` 1006); the client tries again in
    ``reconnect_in`` seconds, or never (None)."""

    code: int
    reason: str
    reconnect_in: float | None


@dataclass(frozen=True, slots=True)
class Joined:
    """The client is in ``channel`` now."""

    channel: str


@dataclass(frozen=True, slots=True)
class Left:
    """The client is no longer in ``channel``."""

    channel: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A join or leave was refused; with ``retry`` the client asks again by itself."""

    channel: str
    reason: str
    retry: bool


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """Any other ``{"event": name, ...}`` frame the server sends, as it came."""

    name: str
    frame: dict[str, Any] = field(default_factory=dict)


#: Everything :meth:`PubSubClient.events` yields.
Event: TypeAlias = (
    Message | Gap | Presence | Direct | Opened | Closed | Joined | Left | Refused | ServerEvent
)


class ClientError(PubSubError):
    """Root of the errors the Python client raises."""


class ClientClosedError(ClientError):
    """The client was closed (by its owner, or for good after a refusal)."""


class ConnectionRefusedByServerError(ClientError):
    """The server refused the connection in a way that asking again cannot change: 1008
    before its welcome (not authorized, an invalid channel id) or an HTTP 4xx handshake."""


class JoinRefusedError(ClientError):
    """A join (or leave) the server refused for good; the message is its reason."""


class ConnectionLostError(ClientError):
    """The connection closed while a message was being sent: it may not have arrived."""


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id ``<ms>-<seq>`` as numbers, to compare ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
