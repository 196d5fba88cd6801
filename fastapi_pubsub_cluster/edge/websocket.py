"""The class users subclass: one instance per client socket, as in ``fastapi-pubsub``."""

from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

from starlette.websockets import WebSocket, WebSocketState

from ..backends.redis import RedisCredentialsLike
from ..core.client import ClientConnection, ConnectionState
from ..core.sends import send_unless_closed
from ..core.view import ChannelView
from ..errors import CloseCode, NotJoinedError, PubSubError
from ..frames import OutgoingFrame
from ..hub import PubSubHub
from ..settings import WireFormat
from ..startup_settings import settings_from_environment
from .admission import admit
from .channel_requests import answer_channel_request, is_channel_request
from .hubs import hub_for_socket
from .reading import close_reason, read_until_disconnect

logger = logging.getLogger("fastapi_pubsub_cluster")


class BasePubSubWebSocket:
    """A client socket in a channel: subclass it and await :meth:`run` in a websocket route.

    ::

        class Counter(BasePubSubWebSocket):
            async def generate_object_to_send(self):
                return {"num_connected_clients": len(self.connection_manager.get(self.channel_id))}

        @app.websocket("/ws/{channel}")
        async def endpoint(websocket: WebSocket, channel: str):
            await Counter(websocket, channel).run()

    The hub is, in order: ``hub``; the implicit hub for ``redis_credentials`` (a URL, a
    dict with host/port/username/password/db, or :class:`RedisCredentials`); the hub that
    ``PubSubHub.lifespan`` stored on the app; the implicit in-memory hub.
    """

    #: True lets clients join and leave further channels with ``{"join": channel}`` and
    #: ``{"leave": channel}`` messages, each join checked by :meth:`authorize_join`.
    client_joins: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Defined when the app module is imported, at startup: a bad PUBSUB_* value stops
        # the server then, with one line, rather than failing every client later.
        super().__init_subclass__(**kwargs)
        settings_from_environment()

    def __init__(
        self,
        websocket: WebSocket,
        channel_id: str,
        redis_credentials: RedisCredentialsLike | None = None,
        *,
        hub: PubSubHub | None = None,
        wire_format: WireFormat | None = None,
        user_id: str | None = None,
    ) -> None:
        self.websocket = websocket
        #: The user this socket belongs to, for ``hub.send_to_user`` (see :meth:`get_user_id`).
        self.user_id = user_id
        self.channel_id = channel_id
        self.hub = hub if hub is not None else hub_for_socket(websocket.scope, redis_credentials)
        self.connection_id = f"{self.hub.worker_id}:{uuid.uuid4().hex}"
        self.wire_format: WireFormat = wire_format or _requested_format(
            websocket, self.hub.settings.wire_format
        )
        #: Stream id to resume after on a channel with history (the ``since`` query parameter).
        self.resume_from: str | None = websocket.query_params.get("since")
        #: True when every channel frame says its channel (``?frames=tagged``, as
        #: ``pubsub.js`` asks); frames of further channels always do.
        self.tagged = websocket.query_params.get("frames") == "tagged"
        self._connection: ClientConnection | None = None

    @property
    def websocket_id(self) -> str:
        """The channel id (the name the original package's README used)."""
        return self.channel_id

    @websocket_id.setter
    def websocket_id(self, value: str) -> None:
        self.channel_id = value

    @property
    def channels(self) -> list[str]:
        """Every channel this socket is in: its own first, then those it joined."""
        connection = self._connection
        return connection.channels if connection is not None else [self.channel_id]

    @property
    def connection_manager(self) -> ChannelView:
        """Who is in which channel, cluster-wide and read-only, under the original
        package's name: ``len(self.connection_manager.get(self.channel_id))`` counts the
        whole cluster (``count``, ``members`` and ``presence`` read the source of truth)."""
        return self.hub.view

    # -- hooks -------------------------------------------------------------------------

    async def generate_object_to_send(self) -> Any:
        """Override to return what every client of the channel receives after a join or a
        leave; ``None`` sends nothing. Runs once per event per worker, not per client."""
        return None

    async def generate_object_for(self, channel: str) -> Any:
        """Override to return what every client of ``channel`` receives after a join or a
        leave there, for sockets in several channels. The default runs
        :meth:`generate_object_to_send` for this socket's own channel, nothing for others."""
        if channel == self.channel_id:
            return await self.generate_object_to_send()
        return None

    async def authorize_join(self, channel: str) -> bool:
        """Override to decide whether the client may join further channel ``channel``
        (asked with ``{"join": channel}``, when :attr:`client_joins` is True); False
        answers ``refused``. The default allows every channel the id rules allow."""
        return True

    async def authorize(self) -> bool:
        """Override to decide, before the handshake is accepted, whether the socket may join
        its channel (read ``self.websocket`` headers, query, cookies); False closes with 1008
        and registers nothing."""
        return True

    async def get_user_id(self) -> str | None:
        """Override to say which user this socket belongs to (``hub.send_to_user`` reaches
        all of a user's sockets); called after :meth:`authorize`, before joining. The
        default returns ``self.user_id`` (the ``user_id`` argument)."""
        return self.user_id

    async def presence_metadata(self) -> dict[str, Any] | None:
        """Override to register a small JSON object with this socket's presence (e.g. a
        name), which ``hub.presence()`` returns: string keys, and values that JSON and
        msgpack both carry (UTF-8 strings, integers that fit 64 bits, finite floats, at most
        64 levels deep), at most ``max_presence_metadata_bytes``; else the socket is closed
        with 1008 before joining. Called after :meth:`authorize`."""
        return None

    async def on_connect(self) -> None:
        """Override to act once the socket is registered in its channel."""

    async def on_message(self, data: Any) -> None:
        """Override to handle a client message: JSON text frames and msgpack binary frames
        arrive decoded. The default ignores it."""

    async def on_reconnect(self) -> None:
        """Override to resync this client after the worker's Redis link came back: messages
        published while it was down were not delivered. Called once per socket per reconnect
        (unless ``close_clients_on_reconnect`` closes the socket with 1012 instead)."""

    async def on_disconnect(self, close_code: int) -> None:
        """Override to act after the socket left its channel (always called, even on errors)."""

    # -- sending (compatible with the original package) --------------------------------

    async def send_json(self, data: Any) -> None:
        """Send ``data`` to this client only, in its wire format.

        While the socket runs, it goes through the same bounded outbox as broadcasts, so it
        keeps its place among them and a slow client cannot make the caller wait.
        """
        frame = OutgoingFrame(data)
        connection = self._connection
        if connection is not None and connection.state is ConnectionState.OPEN:
            connection.offer(frame)
        else:  # before it runs, or once it closes (then nothing is sent: not an error)
            await self._send_direct(frame.binary if self.wire_format == "msgpack" else frame.text)

    async def send_message(self, message: str) -> None:
        """Send a text frame to this client only (nothing to a client closing or gone)."""
        await self._send_direct(message)

    async def _send_direct(self, message: str | bytes) -> None:
        gone = self._connection is not None and self._connection.state in _GONE
        await send_unless_closed(self.websocket, message, self.connection_id, gone=gone)

    async def receive_message(self) -> str:
        """Receive one text frame (the original package's helper; :meth:`run` reads for you)."""
        return await self.websocket.receive_text()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close this client's socket."""
        if self.websocket.application_state == WebSocketState.CONNECTED:
            await self.websocket.close(code, reason)

    async def join(self, channel: str, *, since: str | None = None) -> bool:
        """Put this running socket in ``channel`` too, on every worker: it counts there,
        receives its messages (tagged ``{"channel": ..., "data": ...}``) and is told
        ``joined`` first. With ``since``, the channel's stored messages after that id come
        before live ones. False if it was in it already. Call it from :meth:`on_connect` or
        :meth:`on_message`. Raises InvalidChannelError, ChannelLimitError, NotJoinedError
        or BackendUnavailableError (then nothing is joined)."""
        connection = self._connection
        if connection is None:
            raise NotJoinedError("join further channels while the socket runs (from on_connect)")
        return await self.hub.join(connection, channel, since=since)

    async def leave(self, channel: str) -> bool:
        """Take this socket out of a channel it joined (it is told ``left``); False if it
        was not in it. Its own channel cannot be left: close the socket instead."""
        connection = self._connection
        if connection is None:
            return False
        return await self.hub.leave(connection, channel)

    async def process(self) -> None:
        """Run :meth:`generate_object_to_send` and publish the result to the whole channel."""
        payload = await self.generate_object_to_send()
        if payload is not None:
            await self.hub.publish(self.channel_id, payload)

    async def publish(self, payload: Any, *, exclude_self: bool = False) -> None:
        """Send ``payload`` to every client of this socket's channel, on every worker
        (except this socket with ``exclude_self``)."""
        exclude = self.connection_id if exclude_self else None
        await self.hub.publish(self.channel_id, payload, exclude=exclude)

    # -- the connection loop -----------------------------------------------------------

    async def run(self, send_message_on_exception: bool = True) -> None:
        """Authorize, join the channel, accept, read client messages until disconnect, then
        leave (always, even on errors and cancellation).

        ``send_message_on_exception=False`` (the original package's flag) leaves without
        telling the channel.
        """
        admission = await admit(self)  # every check made before the handshake is accepted
        if admission is None:
            return
        # Started first: a hub that runs again does so with a new core.
        try:
            await self.hub.start_on_first_use()
        except PubSubError as exc:
            logger.warning("socket for %r could not join: %s", self.channel_id, exc)
            await self.websocket.accept()
            await self.close(CloseCode.TRY_AGAIN_LATER, "pub/sub backend unavailable")
            return
        # Joined before the handshake completes, with messages held until then: a client
        # that sees itself accepted misses nothing published afterwards.
        connection = self.hub.connection(
            self.websocket,
            self.channel_id,
            self.connection_id,
            hooks=self,
            wire_format=self.wire_format,
            resume_from=self.resume_from,
            user_id=self.user_id,
            metadata=admission.metadata,
            tagged=self.tagged,
        )
        self._connection = connection
        close_code: int = CloseCode.NORMAL
        try:
            try:
                await self.hub.connect(connection, notify=True)
            except PubSubError as exc:
                logger.warning("socket for %r could not join: %s", self.channel_id, exc)
                close_code = CloseCode.TRY_AGAIN_LATER
                await self.websocket.accept()
                await self.close(close_code, close_reason(f"pub/sub backend unavailable: {exc}"))
                return
            await self.websocket.accept()
            if self.tagged:  # before the replay and the held messages that release() sends
                await self.send_json(self._welcome())
            connection.release()
            await self.on_connect()
            close_code = await read_until_disconnect(
                self.websocket, connection, self.hub, self._handle
            )
        finally:
            await self.hub.disconnect(connection, notify=send_message_on_exception)
            await connection.stop_writer()
            await self.on_disconnect(close_code)

    async def _handle(self, connection: ClientConnection, data: Any) -> None:
        if self.client_joins and is_channel_request(data):
            await answer_channel_request(self, connection, data, self.hub.settings)
        else:
            await self.on_message(data)

    def _welcome(self) -> dict[str, str | bool]:
        welcome: dict[str, str | bool] = {
            "event": "welcome",
            "connection_id": self.connection_id,
            "channel": self.channel_id,
            # So that a client's join of a further channel fails at once where none is taken.
            "client_joins": self.client_joins,
        }
        connection = self._connection
        if connection is not None and self.hub.settings.has_history(self.channel_id):
            welcome["last_id"] = connection.resume_from or "0-0"  # where to resume from
        return welcome


#: Connection states in which a client takes nothing more.
_GONE = frozenset((ConnectionState.CLOSED, ConnectionState.EVICTED))


def _requested_format(websocket: WebSocket, default: WireFormat) -> WireFormat:
    requested = websocket.query_params.get("format")
    return "msgpack" if requested == "msgpack" else "json" if requested == "json" else default
