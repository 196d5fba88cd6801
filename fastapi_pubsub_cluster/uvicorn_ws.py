"""An opt-in uvicorn websocket protocol with a direct path for fan-out.

Through ASGI, each delivery walks Starlette's and uvicorn's ``send`` and frames the
message again for every socket. Served with this protocol::

    uvicorn app:app --ws fastapi_pubsub_cluster.uvicorn_ws:PubSubWebSocketProtocol

a broadcast is framed once and the same bytes are written to each open socket's transport,
as ``websockets.broadcast()`` does, whenever the socket is open, uncompressed and not
applying backpressure. Everything else (handshake, receiving, closing, pings, sockets that
negotiated permessage-deflate, sockets whose buffer is full) goes through uvicorn's own
``websockets-sansio`` protocol, unchanged. Plain ASGI stays the default that always works.

This module is the edge: it depends on the core, never the other way round.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .codec import OutgoingFrame
from .core.client import DIRECT_WRITE_EXTENSION

__all__ = ["DIRECT_WRITE_EXTENSION", "DirectWriter", "PubSubWebSocketProtocol"]


def wire_frame(frame: OutgoingFrame, *, text: bool) -> bytes:
    """The payload as one unmasked server-to-client WebSocket frame, built once."""
    if text:
        if frame.wire_text is None:
            frame.wire_text = Frame(Opcode.TEXT, frame.text.encode()).serialize(mask=False)
        return frame.wire_text
    if frame.wire_binary is None:
        frame.wire_binary = Frame(Opcode.BINARY, frame.binary).serialize(mask=False)
    return frame.wire_binary


class DirectWriter:
    """Writes ready-made data frames straight to one connection's transport."""

    __slots__ = ("frames_written", "protocol")

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self.protocol = protocol
        #: Frames this writer wrote (so that tests and metrics can see the path is used).
        self.frames_written = 0

    def try_write(self, frame: OutgoingFrame, *, text: bool) -> bool:
        """Write ``frame`` if the socket can take it now as is; False: use ASGI instead."""
        protocol = self.protocol
        if (
            protocol.close_sent
            or protocol.disconnected
            or protocol.conn.state is not State.OPEN
            or protocol.conn.extensions  # compressed frames differ per socket
            or not protocol.writable.is_set()  # backpressure: the ASGI path waits
        ):
            return False
        protocol.transport.write(wire_frame(frame, text=text))
        self.frames_written += 1
        return True

    def abort(self) -> None:
        """Drop the connection without flushing: uvicorn then reports a disconnect."""
        self.protocol.transport.abort()


class PubSubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, announcing a :class:`DirectWriter` in the
    ASGI scope of each connection."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            # The app task was created but has not run yet: it sees the extension.
            scope.setdefault("extensions", {})[DIRECT_WRITE_EXTENSION] = DirectWriter(self)
