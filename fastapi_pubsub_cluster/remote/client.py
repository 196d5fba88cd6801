"""``PubSubClient``: a Python client of the library's sockets, as ``pubsub.js`` is the
browser's. It reconnects with full jitter and resumes history channels after the last id
it saw on each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self

import websockets
from websockets.asyncio.client import ClientConnection

from .events import (
    ClientClosedError,
    ClientError,
    ClientState,
    Closed,
    ConnectionLostError,
    ConnectionRefusedByServerError,
    Event,
    Joined,
    JoinRefusedError,
    Left,
    Message,
    Opened,
    Refused,
    WireFormat,
)
from .inbox import Answers, Inbox
from .protocol import (
    ABNORMAL_CLOSURE,
    CONNECT_TIMEOUT_CODE,
    NO_CLIENT_JOINS,
    Session,
    encode,
    full_jitter,
    handshake_refusal,
)

logger = logging.getLogger("fastapi_pubsub_cluster.remote")


class PubSubClient:
    """A socket in its own channel (the URL's) and in any further channels it joins.

    ``async with PubSubClient("ws://host/ws/news") as client:`` returns once the server
    welcomed it; ``async for message in client.messages():`` then reads what is published.
    Everything the server says arrives, in order, in one bounded inbox (``max_queue``
    events): while it is full the client stops reading its socket, so a consumer that falls
    behind is pushed back on, and the server's slow-client policy decides (a closed socket
    is reconnected and history channels resume where they were).

    ``format``: the wire format (default: the URL's ``format``, else JSON). Reconnect
    delays are drawn at random below a cap that doubles from ``min_delay`` up to
    ``max_delay`` seconds (full jitter). A connection not welcomed within ``connect_timeout``
    seconds is tried again. ``headers`` go with every handshake (e.g. a token);
    ``max_size`` bounds one incoming frame (None: no bound).
    """

    def __init__(
        self,
        url: str,
        *,
        format: WireFormat | None = None,
        min_delay: float = 0.25,
        max_delay: float = 10.0,
        connect_timeout: float = 10.0,
        max_queue: int = 1024,
        headers: Mapping[str, str] | None = None,
        max_size: int | None = 16 * 1024 * 1024,
    ) -> None:
        self._session = Session(url, format)
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self._headers = dict(headers or {})
        self._max_size = max_size
        self._inbox = Inbox(max_queue)
        self._state = ClientState.CONNECTING
        self._socket: ClientConnection | None = None
        self._open = asyncio.Event()  # set while welcomed, and once the client is done
        self._failure: ClientError | None = None
        self._answers = Answers()
        self._rejoins: dict[str, int] = {}  # joins refused for now, and how often in a row
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    # -- what the client is ---------------------------------------------------------------

    @property
    def format(self) -> WireFormat:
        return self._session.wire_format

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def channel(self) -> str:
        """The own channel (the URL's, as the server's welcome names it)."""
        return self._session.channel

    @property
    def channels(self) -> list[str]:
        """The channels this client is in, or will be once (re)connected: its own first."""
        return self._session.channels

    @property
    def connection_id(self) -> str | None:
        """The server's id of the current connection; None between connections."""
        return self._session.connection_id

    def last_id(self, channel: str) -> str | None:
        """The newest stream id seen on ``channel`` (a history channel), if any."""
        return self._session.last_ids.get(channel)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Start connecting; return once welcomed. Raises
        :class:`ConnectionRefusedByServerError` if the server refused for good. While the
        server cannot be reached it keeps trying: bound the wait with ``asyncio.timeout``."""
        if self._runner is None:
            if self._state is ClientState.CLOSED:
                raise ClientClosedError("the client is closed")
            self._runner = asyncio.create_task(self._run(), name="pubsub-client")
        await self._open.wait()
        self._raise_if_done()

    async def close(self) -> None:
        """Close the connection for good (code 1000); pending joins and leaves fail with
        :class:`ClientClosedError`; iterating ends once the inbox is read. Idempotent."""
        if self._state is ClientState.CLOSED and self._runner is None:
            return
        await self._inbox.put(Closed(1000, "closed by the client", None))
        self._finish(ClientClosedError("the client is closed"))
        runner, self._runner = self._runner, None
        tasks = [*self._tasks, *([runner] if runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading --------------------------------------------------------------------------

    async def receive(self) -> Event:
        """The next event, whatever its kind. Raises :class:`ClientClosedError` (or why the
        server refused the client) once the client is done and every event was read."""
        return await self._inbox.get()

    async def events(self) -> AsyncIterator[Event]:
        """Every event in order: messages, gaps, presence, direct sends, opens, closes,
        joins, leaves, refusals. Ends when the client is closed."""
        while True:
            try:
                event = await self.receive()
            except ClientClosedError:
                return
            yield event

    async def messages(self, *channels: str) -> AsyncIterator[Message]:
        """The messages of ``channels`` (default: of every channel), in order. Other events
        read meanwhile, and messages of other channels, are passed over: to see gaps and
        presence too, iterate :meth:`events`."""
        async for event in self.events():
            if isinstance(event, Message) and (not channels or event.channel in channels):
                yield event

    # -- asking the server ----------------------------------------------------------------

    async def send(self, data: Any) -> None:
        """Send ``data`` to the server (its ``on_message``), in the client's format; waits
        while the client is between connections. Raises :class:`ConnectionLostError` if the
        connection closed under the send."""
        frame = encode(data, self.format)
        socket = None
        while socket is None:
            await self._open.wait()
            self._raise_if_done()
            socket = self._socket if self._session.welcomed else None
        try:
            await socket.send(frame)
        except websockets.ConnectionClosed as exc:
            raise ConnectionLostError(f"the connection closed while sending: {exc}") from exc

    async def join(self, channel: str) -> None:
        """Join a further channel (the server's socket class must set ``client_joins``);
        returns once joined, raises :class:`JoinRefusedError` if refused. While the client
        is between connections it waits for the next one. The channel is joined again after
        every reconnect, resuming its history after the last id seen."""
        self._raise_if_done()
        if self._session.client_joins is False and channel != self.channel:
            await self._deliver(self._session.refuse_locally(channel))
            raise JoinRefusedError(NO_CLIENT_JOINS)
        answer = self._answers.expect(channel, "join")
        if channel != self.channel:
            self._session.wanted[channel] = None
        await self._send_quietly(self._session.join_request(channel))
        await answer

    async def leave(self, channel: str) -> None:
        """Leave a further channel; returns once left (at once between connections: it
        will not be joined again). Raises :class:`JoinRefusedError` for the own channel."""
        self._raise_if_done()
        self._session.wanted.pop(channel, None)
        if not self._session.welcomed:
            if channel == self.channel:
                raise JoinRefusedError("the own channel cannot be left")
            return
        answer = self._answers.expect(channel, "leave")
        await self._send_quietly({"leave": channel})
        await answer

    # -- the connection -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_until_done()
        except Exception as exc:
            # A bug must not leave the owner waiting on a client that no longer runs.
            logger.exception("the client stopped")
            self._finish(ClientError(f"the client stopped: {exc!r}"))

    async def _connect_until_done(self) -> None:
        attempt = 0
        while True:
            code, reason = await self._connect_once()
            if self._session.welcomed:
                attempt = 0
            self._socket = None
            self._open.clear()
            events, refused_for_good = self._session.closed(code, reason)
            # Leaves in flight are done: the server forgot the socket, it will not re-join.
            self._answers.settle(kind="leave")
            for event in events:
                await self._deliver(event)
            if refused_for_good:
                await self._deliver(Closed(code, reason, None))
                self._finish(ConnectionRefusedByServerError(f"refused: {code} {reason}"))
                return
            self._state = ClientState.RECONNECTING
            delay = self._session.retry_after + full_jitter(attempt, self.min_delay, self.max_delay)
            attempt = min(attempt + 1, 30)
            logger.info("connection closed (%s %s); again in %.2f s", code, reason, delay)
            await self._deliver(Closed(code, reason, delay))
            await asyncio.sleep(delay)

    async def _connect_once(self) -> tuple[int, str]:
        """One connection, from handshake to close: its close code and reason."""
        url = self._session.connect_url()
        try:
            async with asyncio.timeout(self.connect_timeout) as deadline:
                async with websockets.connect(
                    url,
                    additional_headers=self._headers,
                    max_size=self._max_size,
                    open_timeout=None,  # the deadline above covers the handshake
                    close_timeout=5,
                ) as socket:
                    try:
                        async for frame in socket:
                            for event in self._session.receive(frame):
                                if isinstance(event, Opened):
                                    deadline.reschedule(None)
                                    await self._opened(socket)
                                await self._deliver(event)
                    except websockets.ConnectionClosed:
                        pass
                    return int(socket.close_code or ABNORMAL_CLOSURE), socket.close_reason or ""
        except TimeoutError:
            return CONNECT_TIMEOUT_CODE, "connect timeout"
        except websockets.InvalidStatus as exc:
            return handshake_refusal(exc.response.status_code)
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            return ABNORMAL_CLOSURE, str(exc) or type(exc).__name__

    async def _opened(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._state = ClientState.OPEN
        self._open.set()
        self._answers.settle(channel=self.channel, kind="join")
        for request in self._session.rejoin_requests():
            await socket.send(encode(request, self.format))

    async def _deliver(self, event: Event) -> None:
        if isinstance(event, Joined):
            self._rejoins.pop(event.channel, None)
            self._answers.settle(channel=event.channel, kind="join")
        elif isinstance(event, Left):
            self._answers.settle(channel=event.channel, kind="leave")
        elif isinstance(event, Refused) and event.retry:
            self._spawn(self._join_again(event.channel))
        elif isinstance(event, Refused):
            self._rejoins.pop(event.channel, None)
            self._answers.settle(JoinRefusedError(event.reason), channel=event.channel)
        await self._inbox.put(event)

    async def _join_again(self, channel: str) -> None:
        """A join refused for now (the server's backend was unavailable): ask again after a
        jittered delay, growing while it is refused."""
        attempt = self._rejoins.get(channel, 0)
        self._rejoins[channel] = attempt + 1
        await asyncio.sleep(full_jitter(attempt, self.min_delay, self.max_delay))
        if channel in self._session.wanted and self._session.welcomed:
            await self._send_quietly(self._session.join_request(channel))

    # -- helpers --------------------------------------------------------------------------

    async def _send_quietly(self, request: dict[str, str]) -> None:
        # Between connections nothing is sent: the next welcome sends every join again.
        socket = self._socket
        if socket is not None and self._session.welcomed:
            with contextlib.suppress(websockets.ConnectionClosed):
                await socket.send(encode(request, self.format))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, error: ClientError) -> None:
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        self._failure = error
        self._answers.settle(error)
        self._open.set()  # wakes senders and connect(), which then raise
        self._inbox.end(error)

    def _done_error(self) -> ClientError:
        return self._failure or ClientClosedError("the client is closed")

    def _raise_if_done(self) -> None:
        if self._state is ClientState.CLOSED:
            raise self._done_error()
