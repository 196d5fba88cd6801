"""The fan-out core and the contracts it has with backends and sockets."""

from .backend import Backend, BackendEvent, ChannelDropped, ChannelLoaded, FanOutSink, HistorySlice
from .client import ClientConnection, ConnectionState, SocketHooks
from .fanout import FanOut

__all__ = [
    "Backend",
    "BackendEvent",
    "ChannelDropped",
    "ChannelLoaded",
    "ClientConnection",
    "ConnectionState",
    "FanOut",
    "FanOutSink",
    "HistorySlice",
    "SocketHooks",
]
