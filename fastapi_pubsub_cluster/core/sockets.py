"""The small contracts through which the core reaches sockets, and sockets the core."""

from __future__ import annotations

from typing import Any, Protocol

from ..frames import OutgoingFrame

#: Key, in the ASGI scope's ``extensions``, of a :class:`DirectWriter` offered by the server
#: integration (``fastapi_pubsub_cluster.servers.uvicorn_ws``).
DIRECT_WRITE_EXTENSION = "fastapi_pubsub_cluster.direct_write"


class SocketHooks(Protocol):
    """What the core calls on the application's socket object
    (:class:`~fastapi_pubsub_cluster.edge.websocket.BasePubSubWebSocket`)."""

    async def generate_object_for(self, channel: str) -> Any:
        """What every client of ``channel`` (one this socket is in) receives after a join
        or leave there (None: nothing)."""

    async def on_reconnect(self) -> None:
        """Called after the worker's link to the backend came back."""


class DirectWriter(Protocol):
    """A server integration's way to write a ready-made frame straight to one socket."""

    #: Frames written this way.
    frames_written: int

    def try_write(self, frame: OutgoingFrame, *, text: bool) -> bool:
        """Write ``frame`` if the socket can take it now as is; False: use ASGI instead."""

    def abort(self) -> None:
        """Drop the connection at once, without waiting to flush what is buffered."""

    def limit_inbound(self, max_bytes: int) -> None:
        """Refuse (close 1009) a client message over ``max_bytes`` while reading it: a
        compressed one is not inflated past the limit. Called before the handshake."""
