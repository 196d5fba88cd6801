"""An opt-in uvicorn websocket protocol with a direct path for fan-out.

Through ASGI, each delivery walks Starlette's and uvicorn's ``send`` and frames the
message again for every socket. Served with this protocol::

    uvicorn app:app --ws fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol

a broadcast is framed once and the same bytes are written to each open socket's transport,
as ``websockets.broadcast()`` does, whenever the socket is open and not applying
backpressure. Everything else (handshake, receiving, closing, pings, sockets whose buffer is
full) goes through uvicorn's own ``websockets-sansio`` protocol, unchanged. Plain ASGI stays
the default that always works.

Browsers offer permessage-deflate. What a socket that accepts it costs depends on the
compression policy (``PUBSUB_COMPRESSION``, or :meth:`PubSubWebSocketProtocol.with_compression`):

* ``shared`` (default): the server answers with ``server_no_context_takeover``, so that a
  message compresses the same way for every socket with the same parameters; each broadcast
  is compressed once per worker and parameter set and the same frame written to each such
  socket (as gorilla/websocket's ``PreparedMessage``).
* ``per-socket``: a compression context per socket (smallest frames, most CPU, uvicorn's
  own choice); each socket compresses its copy, still without going through ASGI.
* ``off``: permessage-deflate is declined (as is uvicorn's ``--ws-per-message-deflate false``,
  which always wins).

Compression is websockets' own ``permessage-deflate`` extension; nothing is framed or
deflated by hand. This module is the edge: it depends on the core, never the other way round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, cast, get_args

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from ..core.sockets import DIRECT_WRITE_EXTENSION
from ..errors import ConfigurationError
from ..frames import OutgoingFrame
from ..settings import Compression, PubSubSettings
from ..startup_settings import settings_from_environment
from .coalescing import OrderedTransport, iteration_flush

logger = logging.getLogger("fastapi_pubsub_cluster")

__all__ = [
    "COMPRESSION_ENV",
    "DEFAULT_COMPRESSION",
    "DIRECT_WRITE_EXTENSION",
    "Compression",
    "DirectWriter",
    "PubSubWebSocketProtocol",
    "compression_extensions",
]

#: The environment variable that picks the policy (what a ``compression`` setting reads).
COMPRESSION_ENV = "PUBSUB_COMPRESSION"
DEFAULT_COMPRESSION: Compression = "shared"

#: ``shared``: one compressor per message and worker, not per socket, so the window can be
#: the largest; sockets keep only their decompressor for what clients send (12 bits, as
#: uvicorn's). A client asking for a smaller server window gets its own group of frames.
SHARED_DEFLATE = ServerPerMessageDeflateFactory(
    server_no_context_takeover=True,
    client_max_window_bits=12,
    # One dict for every socket: prepared frames are grouped by it (zlib's defaults).
    compress_settings={"level": 6, "memLevel": 8},
)
#: ``per-socket``: uvicorn's own settings (``--ws-per-message-deflate true``).
PER_SOCKET_DEFLATE = ServerPerMessageDeflateFactory(
    server_max_window_bits=12,
    client_max_window_bits=12,
    compress_settings={"memLevel": 5},
)


def compression_from_env(environ: Mapping[str, str] | None = None) -> Compression:
    """The policy the ``compression`` setting names (``PUBSUB_COMPRESSION``, default
    ``shared``), read with the other settings from ``environ`` (None: the process
    environment and ``.env``); while a module is being imported (a server loading this
    protocol), a bad value stops the process with one line and status 3."""
    if environ is None:
        return settings_from_environment().compression
    return PubSubSettings.from_env(environ).compression


def compression_extensions(policy: Compression) -> list[ServerExtensionFactory]:
    """The extensions a socket may negotiate under ``policy``."""
    if policy == "shared":
        return [SHARED_DEFLATE]
    if policy == "per-socket":
        return [PER_SOCKET_DEFLATE]
    return []


def wire_frame(frame: OutgoingFrame, *, text: bool) -> bytes:
    """The payload as one unmasked server-to-client WebSocket frame, built once."""
    if text:
        if frame.wire_text is None:
            frame.wire_text = Frame(Opcode.TEXT, frame.text.encode()).serialize(mask=False)
        return frame.wire_text
    if frame.wire_binary is None:
        frame.wire_binary = Frame(Opcode.BINARY, frame.binary).serialize(mask=False)
    return frame.wire_binary


#: What makes two sockets' compressed frames the same: text or binary, the server's window
#: bits and the compressor settings (one dict per factory).
DeflateKey = tuple[bool, int, int]


def deflate_key(deflate: PerMessageDeflate, *, text: bool) -> DeflateKey:
    """The parameter set of ``deflate`` for a text or binary frame."""
    return (text, deflate.local_max_window_bits, id(deflate.compress_settings))


class PreparedFrames:
    """The compressed frames of the message being fanned out now, one per parameter set.

    Fan-out hands one message to every socket before the next, so remembering the last
    message is enough; a message seen again after another recompresses, which is correct.
    """

    __slots__ = ("_data", "_frame", "_frames")

    def __init__(self) -> None:
        self._frame: OutgoingFrame | None = None
        self._frames: dict[DeflateKey, bytes] = {}
        self._data: dict[bool, Frame] = {}

    def _select(self, frame: OutgoingFrame) -> None:
        if frame is not self._frame:
            self._frame = frame
            self._frames = {}
            self._data = {}

    def data(self, frame: OutgoingFrame, *, text: bool) -> Frame:
        """The uncompressed data frame, built once (extensions encode a new one from it)."""
        self._select(frame)
        data = self._data.get(text)
        if data is None:
            if text:
                data = Frame(Opcode.TEXT, frame.text.encode())
            else:
                data = Frame(Opcode.BINARY, frame.binary)
            self._data[text] = data
        return data

    def deflated(self, frame: OutgoingFrame, key: DeflateKey, deflate: PerMessageDeflate) -> bytes:
        """``frame`` compressed by ``deflate`` (without context takeover) and framed, once per
        parameter set ``key`` (see :func:`deflate_key`)."""
        if frame is self._frame:
            wire = self._frames.get(key)
            if wire is not None:
                return wire  # every socket but the first of its parameter set
        else:
            self._select(frame)
        # Without context takeover, encode() starts a fresh compressor for each message:
        # the socket's extension object keeps nothing from it.
        data = self.data(frame, text=key[0])
        wire = self._frames[key] = data.serialize(mask=False, extensions=[deflate])
        return wire


PREPARED = PreparedFrames()


class DirectWriter:
    """Writes ready-made data frames straight to one connection's transport (queued until
    the end of the loop iteration, so that a socket's frames of one iteration take one
    write: see :mod:`~fastapi_pubsub_cluster.servers.coalescing`)."""

    __slots__ = ("_deflate_keys", "frames_written", "protocol", "transport")

    def __init__(self, protocol: WebSocketsSansIOProtocol, transport: OrderedTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        #: Frames this writer wrote (so that tests and metrics can see the path is used).
        self.frames_written = 0
        self._deflate_keys: tuple[DeflateKey, DeflateKey] | None = None

    def try_write(self, frame: OutgoingFrame, *, text: bool) -> bool:
        """Write ``frame`` if the socket can take it now; False: use ASGI instead."""
        protocol = self.protocol
        conn = protocol.conn
        if (
            protocol.close_sent
            or protocol.disconnected
            or conn.state is not State.OPEN
            or not protocol.writable.is_set()  # backpressure: the ASGI path waits
        ):
            return False
        extensions = conn.extensions
        if not extensions:
            wire = wire_frame(frame, text=text)
        else:
            deflate = extensions[0]
            if len(extensions) != 1 or not isinstance(deflate, PerMessageDeflate):
                return False
            if deflate.local_no_context_takeover:
                keys = self._deflate_keys
                if keys is None:  # negotiated once, at the handshake
                    keys = self._deflate_keys = (
                        deflate_key(deflate, text=False),
                        deflate_key(deflate, text=True),
                    )
                wire = PREPARED.deflated(frame, keys[text], deflate)
            elif conn.writes or conn.expect_continuation_frame:
                return False  # its compressed frames must go out in the order compressed
            else:
                # A context per socket: its frame is its own, compressed by its extension as
                # the protocol's send_text() would (minus checks made above).
                wire = PREPARED.data(frame, text=text).serialize(mask=False, extensions=extensions)
        self.transport.queue(wire)
        self.frames_written += 1
        return True

    def abort(self) -> None:
        """Drop the connection without flushing: uvicorn then reports a disconnect."""
        self.transport.abort()

    def limit_inbound(self, max_bytes: int) -> None:
        """Lower the size at which the connection refuses a message (1009) to ``max_bytes``
        (never raise it above ``--ws-max-size``). websockets checks it frame by frame, and
        stops inflating a compressed frame there."""
        conn = self.protocol.conn
        # websockets 15 renamed it from max_size (an int, or None for no limit, in both).
        name = "max_message_size" if hasattr(conn, "max_message_size") else "max_size"
        current = getattr(conn, name)
        if current is None or max_bytes < current:
            setattr(conn, name, max_bytes)


class PubSubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, announcing a :class:`DirectWriter` in the
    ASGI scope of each connection and negotiating permessage-deflate by :attr:`compression`."""

    #: The policy; None: ``PUBSUB_COMPRESSION`` (read once per process), else ``shared``.
    compression: ClassVar[Compression | None] = None
    _from_env: ClassVar[Compression | None] = None
    _announced: ClassVar[bool] = False  # the log line saying so, once per process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's --ws-per-message-deflate false wins; otherwise the policy decides.
        if self.config.ws_per_message_deflate:
            self.conn.available_extensions = compression_extensions(self.policy())
        else:
            self.conn.available_extensions = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Every write of the protocol goes through it: none overtakes a queued direct frame.
        self.ordered_transport = OrderedTransport(
            cast(asyncio.Transport, transport), iteration_flush()
        )
        super().connection_made(self.ordered_transport)

    @classmethod
    def policy(cls) -> Compression:
        """The compression policy this protocol applies."""
        if cls.compression is not None:
            return cls.compression
        if PubSubWebSocketProtocol._from_env is None:
            PubSubWebSocketProtocol._from_env = compression_from_env()
        return PubSubWebSocketProtocol._from_env

    @classmethod
    def with_compression(cls, policy: Compression) -> type[PubSubWebSocketProtocol]:
        """This protocol with ``policy`` fixed (for ``uvicorn.Config(ws=...)``)."""
        if policy not in get_args(Compression):
            raise ConfigurationError(f"unknown compression policy {policy!r}")
        name = f"PubSubWebSocketProtocol_{policy.replace('-', '_')}"
        return type(name, (cls,), {"compression": policy})

    def handle_connect(self, event: Any) -> None:
        if not PubSubWebSocketProtocol._announced:
            PubSubWebSocketProtocol._announced = True
            deflate = self.policy() if self.config.ws_per_message_deflate else "off"
            logger.info("websockets served by the direct-write protocol (compression: %s)", deflate)
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            # The app task was created but has not run yet: it sees the extension.
            writer = DirectWriter(self, self.ordered_transport)
            scope.setdefault("extensions", {})[DIRECT_WRITE_EXTENSION] = writer


# A server loading this protocol (``uvicorn --ws``, the gunicorn worker) imports this module
# before it accepts a socket: a bad PUBSUB_COMPRESSION stops it here, with one line.
compression_from_env()
