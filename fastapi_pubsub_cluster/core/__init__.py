"""The fan-out core and the contracts it has with backends and sockets."""

from .backend import (
    Backend,
    BackendEvent,
    ChannelLoaded,
    FanOutSink,
    HistorySlice,
    HistoryStore,
    PresenceStore,
    Transport,
)
from .client import ClientConnection, ConnectionState
from .fanout import FanOut
from .sockets import SocketHooks
from .view import ChannelView

__all__ = [
    "Backend",
    "BackendEvent",
    "ChannelLoaded",
    "ChannelView",
    "ClientConnection",
    "ConnectionState",
    "FanOut",
    "FanOutSink",
    "HistorySlice",
    "HistoryStore",
    "PresenceStore",
    "SocketHooks",
    "Transport",
]
