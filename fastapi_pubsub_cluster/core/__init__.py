"""The fan-out core and the contracts it has with backends and sockets."""

from .backend import Backend, BackendEvent, ChannelDropped, ChannelLoaded, FanOutSink, HistorySlice
from .client import ClientConnection, ConnectionState
from .fanout import FanOut
from .sockets import SocketHooks

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
