"""A Python client of the library's sockets, speaking what ``pubsub.js`` speaks
(docs/client-protocol.md): for services, scripts, load tests and an app's own tests.

Needs ``websockets``: ``pip install 'fastapi-pubsub-cluster[client]'``.
"""

from __future__ import annotations

try:
    import websockets as _websockets  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "fastapi_pubsub_cluster.remote needs the websockets package: "
        "pip install 'fastapi-pubsub-cluster[client]'"
    ) from exc

from .client import PubSubClient
from .events import (
    ClientClosedError,
    ClientError,
    ClientState,
    Closed,
    ConnectionLostError,
    ConnectionRefusedByServerError,
    Direct,
    Event,
    Gap,
    Joined,
    JoinRefusedError,
    Left,
    Message,
    Opened,
    Presence,
    Refused,
    ServerEvent,
    WireFormat,
)

__all__ = [
    "ClientClosedError",
    "ClientError",
    "ClientState",
    "Closed",
    "ConnectionLostError",
    "ConnectionRefusedByServerError",
    "Direct",
    "Event",
    "Gap",
    "JoinRefusedError",
    "Joined",
    "Left",
    "Message",
    "Opened",
    "Presence",
    "PubSubClient",
    "Refused",
    "ServerEvent",
    "WireFormat",
]
