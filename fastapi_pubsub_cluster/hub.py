"""The per-app object that owns the fan-out core, its backend and their background work."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

from starlette.websockets import WebSocket

from .backends.memory import MemoryBackend
from .backends.redis import RedisBackend, RedisCredentialsLike, redis_url_from
from .core.backend import Backend
from .core.client import ClientConnection
from .core.fanout import FanOut
from .core.subscription import SubscriberPolicy, Subscription
from .core.view import ChannelView
from .errors import HubClosedError, HubStartError, PubSubError
from .limits import InboundAllowances
from .logs import traceback_at_debug
from .metrics import Metrics
from .settings import PubSubSettings
from .startup_settings import settings_from_environment

logger = logging.getLogger("fastapi_pubsub_cluster")

APP_STATE_ATTRIBUTE = "pubsub_hub"
T = TypeVar("T")


class PubSubHub:
    """Owns the fan-out core and its backend: create it once per app, start it in the
    lifespan.

    ::

        hub = PubSubHub(redis_url="redis://localhost:6379/0")
        app = FastAPI(lifespan=hub.lifespan)

        @app.post("/notify")
        async def notify(text: str) -> None:
            await hub.publish("news", {"text": text})

    Without a Redis URL (argument, ``settings.redis_url`` or ``PUBSUB_REDIS_URL``) the hub
    runs in memory, for a single process. ``backend`` replaces the built-in choice with any
    object that keeps the :class:`~fastapi_pubsub_cluster.core.backend.Backend` contract.
    """

    def __init__(
        self,
        redis_url: RedisCredentialsLike | None = None,
        *,
        settings: PubSubSettings | None = None,
        metrics: Metrics | None = None,
        backend: Backend | None = None,
    ) -> None:
        settings = settings if settings is not None else settings_from_environment()
        if redis_url is not None:
            settings = settings.with_changes(redis_url=redis_url_from(redis_url))
        self.settings = settings
        self._given_backend = backend
        self._metrics = metrics
        self._reconnect_hooks: list[Callable[[], Awaitable[None]]] = []
        self._stopped_in: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None
        self._warned = False
        self.has_run = False  # started at least once (this run or an earlier one)
        self._renew()
        _created_hubs.add(self)

    def _renew(self) -> None:
        # A run: a core and a backend (a new worker id), its lock and its event loop.
        # Everything bound to an event loop is made anew, since a hub may run again in
        # another (TestClient runs each session on an event loop of its own).
        settings = self.settings
        backend = self._given_backend
        if backend is None:
            backend = (
                RedisBackend(settings, metrics=self._metrics)
                if settings.redis_url
                else MemoryBackend(settings)
            )
        self._fanout = FanOut(backend, settings, self._metrics)
        for hook in self._reconnect_hooks:
            self._fanout.add_reconnect_hook(hook)
        #: What each client address may still send, and the addresses cooling down.
        self.inbound = InboundAllowances(
            settings.inbound_messages_per_second,
            settings.inbound_bytes_per_second,
            settings.max_message_bytes,
            settings.inbound_cooldown if settings.inbound_rate_policy == "disconnect" else 0.0,
        )
        self._state = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = asyncio.Lock()

    @property
    def fanout(self) -> FanOut:
        """The fan-out core of the current run: local sockets, the membership mirror,
        delivery."""
        loop = self._loop
        if loop is not None and loop.is_closed():
            # The run's event loop is gone (TestClient without ``with`` runs each call on
            # a loop of its own), and its tasks ended with it: run anew in this one.
            logger.debug("the hub's event loop closed; it starts again on first use")
            self._renew()
        return self._fanout

    @property
    def backend(self) -> Backend:
        """The backend that carries publications and presence between workers."""
        return self.fanout.backend

    @property
    def started(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self.fanout is not None and self._state == "started"  # (fanout: renewed)

    async def start(self) -> None:
        """Connect and start background work; does nothing if already started. A stopped
        hub starts again, with nothing of its previous run (sockets, presence, worker id)."""
        fanout = self.fanout
        async with self._start_lock:
            if self._state == "started":
                return
            await fanout.start()
            self._state = "started"
            self.has_run = True
            self._loop = asyncio.get_running_loop()
            self._stopped_in = None

    async def stop(self) -> None:
        """Close sockets with 1001, remove presence, cancel and await tasks; idempotent.
        The hub may be started again afterwards (a new run)."""
        fanout = self.fanout
        async with self._start_lock:
            if self._state != "started":
                return
            self._state = "stopping"
            watch, self._watch = self._watch, None
            if watch is not None and watch is not asyncio.current_task():
                watch.cancel()
            try:
                await fanout.stop()
            finally:
                self._renew()
                # Sockets that arrive as a server shuts down must not start it again.
                self._stopped_in = asyncio.get_running_loop()

    async def __aenter__(self) -> PubSubHub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """A FastAPI lifespan: ``FastAPI(lifespan=hub.lifespan)``.

        It also stores the hub as ``app.state.pubsub_hub``, where sockets created without
        an explicit hub find it. Inside a lifespan of your own, ``async with hub:`` and
        ``yield {"pubsub_hub": hub}`` (FastAPI's lifespan state) do the same.
        """
        setattr(app.state, APP_STATE_ATTRIBUTE, self)
        try:
            await self.start()
        except PubSubError as exc:
            # One line that says what to fix; the server then stops (startup failed).
            logger.error("pub/sub hub could not start: %s", exc)
            traceback_at_debug(HubStartError)
            raise HubStartError(str(exc)) from None
        try:
            yield
        finally:
            await self.stop()

    async def start_on_first_use(self) -> None:
        """Start now if nothing started the hub yet, with a warning (give it a lifespan).
        It then stops as its event loop ends (``asyncio.run``, a server, each call of a
        TestClient used without ``with``), as the loop cancels what still runs."""
        if self.started:
            return
        if self._stopped_in is asyncio.get_running_loop():
            raise HubClosedError("the hub was stopped (the server shuts down)")
        if not self._warned:
            self._warned = True
            logger.warning(
                "PubSubHub started on first use; give it the app's lifespan "
                "(FastAPI(lifespan=hub.lifespan), or `async with hub:` in yours) so that it "
                "stops cleanly"
            )
        await self.start()
        if self._state == "started" and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(
                self._stop_with_loop(self._fanout), name="pubsub-hub-loop-end"
            )

    async def _stop_with_loop(self, fanout: FanOut) -> None:
        # Cancelled as the loop ends (asyncio.Runner cancels every task), or by stop().
        try:
            await asyncio.Future()
        finally:
            if self._fanout is fanout and self.started:
                await self.stop()

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Send ``payload`` to every client of ``channel`` on every worker, except the
        connection whose id is ``exclude`` (e.g. the sender's ``connection_id``)."""
        await self._in_its_loop(lambda fanout: fanout.publish(channel, payload, exclude=exclude))

    async def send_to(self, connection_id: str, payload: Any) -> int:
        """Send ``payload`` to one connection (a socket's ``connection_id``) on whatever
        worker holds it. Returns how many sockets took it: 1, or 0 for a connection that is
        unknown or gone (no error)."""
        return await self._in_its_loop(lambda fanout: fanout.send_to(connection_id, payload))

    async def send_to_user(self, user_id: str, payload: Any) -> int:
        """Send ``payload`` to every connection of ``user_id`` (see
        ``BasePubSubWebSocket.get_user_id``) on every worker; how many sockets took it."""
        return await self._in_its_loop(lambda fanout: fanout.send_to_user(user_id, payload))

    @asynccontextmanager
    async def subscribe(
        self,
        channel: str,
        *,
        max_queue: int | None = None,
        policy: SubscriberPolicy = "drop_oldest",
    ) -> AsyncIterator[Subscription]:
        """Read ``channel``'s messages in Python, as published on any worker::

            async with hub.subscribe("news") as messages:
                async for message in messages:
                    ...

        Only published messages arrive (not the join/leave results of
        ``generate_object_to_send``, nor targeted sends); on channels with history each is
        ``{"id": ..., "data": ...}``. A subscriber is not a member of the channel. At most
        ``max_queue`` messages (default ``send_queue_size``) wait unread; then
        ``"drop_oldest"`` drops the oldest (counted in ``messages.dropped``) and ``"error"``
        ends the iteration with :class:`~fastapi_pubsub_cluster.errors.SubscriberOverflowError`.
        Fan-out never waits for a subscriber. The iteration ends when the block is left
        or the hub stops.
        """
        await self.start_on_first_use()
        async with self.fanout.subscribe(channel, max_queue=max_queue, policy=policy) as messages:
            yield messages

    def get(self, channel: str) -> frozenset[str]:
        """Cluster-wide connection ids of ``channel`` from this worker's mirror (no I/O)."""
        return self.fanout.view.get(channel)

    def presence_of(self, channel: str) -> dict[str, Any]:
        """Cluster-wide connection id -> presence metadata (None without) of ``channel``,
        from this worker's mirror (no I/O; empty unless this worker hears the channel)."""
        return self.fanout.view.presence_of(channel)

    async def presence(self, channel: str) -> dict[str, Any]:
        """Cluster-wide connection id -> presence metadata (None without) of ``channel``,
        read from the source of truth."""
        return await self._in_its_loop(lambda fanout: fanout.view.presence(channel))

    async def members(self, channel: str) -> frozenset[str]:
        """Cluster-wide connection ids of ``channel`` read from the source of truth."""
        return await self._in_its_loop(lambda fanout: fanout.view.members(channel))

    async def count(self, channel: str) -> int:
        """Cluster-wide number of connections in ``channel`` read from the source of truth."""
        return await self._in_its_loop(lambda fanout: fanout.view.count(channel))

    def add_reconnect_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call ``hook`` after the Redis link comes back (messages in the gap were lost)."""
        self._reconnect_hooks.append(hook)  # kept for the runs to come
        self.fanout.add_reconnect_hook(hook)

    async def _in_its_loop(self, call: Callable[[FanOut], Coroutine[Any, Any, T]]) -> T:
        """``call(fanout)`` on the started core, awaited in the event loop the core runs
        in. TestClient without ``with`` runs each request on a loop of its own while an
        open socket's loop runs on: a publish there is handed to the socket's loop."""
        await self.start_on_first_use()
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop() or not loop.is_running():
            return await call(self._fanout)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(self._fanout), loop))

    # -- what the socket edge needs (it reaches the core only through these; see FanOut) --

    @property
    def metrics(self) -> Metrics:
        return self.fanout.metrics

    @property
    def view(self) -> ChannelView:
        return self.fanout.view

    @property
    def worker_id(self) -> str:
        return self.fanout.worker_id

    def connection(
        self, websocket: WebSocket, channel: str, connection_id: str, **options: Any
    ) -> ClientConnection:
        """A connection for ``websocket`` in ``channel``, holding messages until released."""
        return self.fanout.connection(websocket, channel, connection_id, **options)

    async def connect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        await self.fanout.connect(connection, notify=notify)

    async def disconnect(self, connection: ClientConnection, *, notify: bool = True) -> None:
        await self.fanout.disconnect(connection, notify=notify)

    async def join(
        self, connection: ClientConnection, channel: str, *, since: str | None = None
    ) -> bool:
        return await self.fanout.join(connection, channel, since=since)

    async def leave(self, connection: ClientConnection, channel: str) -> bool:
        return await self.fanout.leave(connection, channel)

    def subscription(
        self, channels: Sequence[str], *, max_queue: int | None, policy: SubscriberPolicy
    ) -> AbstractAsyncContextManager[Subscription]:
        """One subscription to several channels (the hub already started)."""
        return self.fanout.subscribe(channels, max_queue=max_queue, policy=policy)


# Hubs the application created (implicit ones are not), while they are alive.
_created_hubs: weakref.WeakSet[PubSubHub] = weakref.WeakSet()


def created_hubs() -> list[PubSubHub]:
    """The hubs the application created that are still alive."""
    return list(_created_hubs)


def forget_created(hub: PubSubHub) -> None:
    """``hub`` is the library's own (an implicit hub): no socket finds it as the app's."""
    _created_hubs.discard(hub)
