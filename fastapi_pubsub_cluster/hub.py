"""The per-app object that owns the fan-out core, its backend and their background work."""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import FrameType, TracebackType
from typing import Any

from starlette.requests import HTTPConnection

from .backends.memory import MemoryBackend
from .backends.redis import RedisBackend, RedisCredentialsLike, redis_url_from
from .config_errors import exit_on_configuration_error
from .core.backend import Backend
from .core.fanout import FanOut
from .core.subscription import SubscriberPolicy, Subscription
from .edge.limits import InboundAllowances
from .errors import ConfigurationError, HubClosedError, PubSubError
from .logs import traceback_at_debug
from .metrics import Metrics
from .redaction import redact_url
from .settings import PubSubSettings

logger = logging.getLogger("fastapi_pubsub_cluster")

APP_STATE_ATTRIBUTE = "pubsub_hub"


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
        if backend is None:
            backend = (
                RedisBackend(settings, metrics=metrics)
                if settings.redis_url
                else MemoryBackend(settings)
            )
        #: The fan-out core: local sockets, the membership mirror, delivery.
        self.fanout = FanOut(backend, settings, metrics)
        _created_hubs.add(self)
        #: What each client address may still send, and the addresses cooling down.
        self.inbound = InboundAllowances(
            settings.inbound_messages_per_second,
            settings.inbound_bytes_per_second,
            settings.max_message_bytes,
            settings.inbound_cooldown if settings.inbound_rate_policy == "disconnect" else 0.0,
        )
        self._state = "new"
        self._start_lock = asyncio.Lock()

    @property
    def backend(self) -> Backend:
        """The backend that carries publications and presence between workers."""
        return self.fanout.backend

    @property
    def started(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._state == "started"

    async def start(self) -> None:
        """Connect and start background work; does nothing if already started."""
        async with self._start_lock:
            if self._state == "started":
                return
            if self._state == "stopped":
                raise HubClosedError("this hub was stopped; create a new one")
            await self.fanout.start()
            self._state = "started"

    async def stop(self) -> None:
        """Close sockets with 1001, remove presence, cancel and await tasks; idempotent."""
        async with self._start_lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
            await self.fanout.stop()

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
        """Start now if nothing started the hub yet, with a warning: without a lifespan
        nothing stops it cleanly (its presence then lingers until peers reap it)."""
        if self._state == "new":
            logger.warning(
                "PubSubHub started on first use; give it the app's lifespan "
                "(FastAPI(lifespan=hub.lifespan), or `async with hub:` in yours) so that it "
                "stops cleanly"
            )
        await self.start()

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Send ``payload`` to every client of ``channel`` on every worker, except the
        connection whose id is ``exclude`` (e.g. the sender's ``connection_id``)."""
        if self._state != "started":
            await self.start_on_first_use()
        await self.fanout.publish(channel, payload, exclude=exclude)

    async def send_to(self, connection_id: str, payload: Any) -> int:
        """Send ``payload`` to one connection (a socket's ``connection_id``) on whatever
        worker holds it. Returns how many sockets took it: 1, or 0 for a connection that is
        unknown or gone (no error)."""
        if self._state != "started":
            await self.start_on_first_use()
        return await self.fanout.send_to(connection_id, payload)

    async def send_to_user(self, user_id: str, payload: Any) -> int:
        """Send ``payload`` to every connection of ``user_id`` (see
        ``BasePubSubWebSocket.get_user_id``) on every worker; how many sockets took it."""
        if self._state != "started":
            await self.start_on_first_use()
        return await self.fanout.send_to_user(user_id, payload)

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
        if self._state != "started":
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
        return await self.fanout.view.presence(channel)

    async def members(self, channel: str) -> frozenset[str]:
        """Cluster-wide connection ids of ``channel`` read from the source of truth."""
        return await self.fanout.view.members(channel)

    async def count(self, channel: str) -> int:
        """Cluster-wide number of connections in ``channel`` read from the source of truth."""
        return await self.fanout.view.count(channel)

    def add_reconnect_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call ``hook`` after the Redis link comes back (messages in the gap were lost)."""
        self.fanout.add_reconnect_hook(hook)


class HubStartError(PubSubError):
    """The hub could not start in the app's lifespan (its backend is unreachable)."""


def settings_from_environment() -> PubSubSettings:
    """``PubSubSettings.from_env()``; while an app module is being imported (startup), a
    configuration error stops the process with one line naming the variable and the allowed
    values, instead of a traceback through the server's import machinery."""
    if not _importing():
        return PubSubSettings.from_env()
    with exit_on_configuration_error():
        return PubSubSettings.from_env()


def _importing() -> bool:
    """True when called, at any depth, from a module's top level during its import."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


# Hubs the application created (implicit ones are not), while they are alive.
_created_hubs: weakref.WeakSet[PubSubHub] = weakref.WeakSet()


def hub_for(scope: Mapping[str, Any]) -> PubSubHub | None:
    """The hub a socket or request with this ASGI ``scope`` uses when it names none.

    In order: the hub ``hub.lifespan`` stored on ``app.state``; the hub in FastAPI's
    lifespan state (``yield {"pubsub_hub": hub}``); the only running hub the application
    created; the only one not started yet. None if it created none. Raises
    :class:`ConfigurationError` if several qualify and nothing says which one.
    """
    state = getattr(scope.get("app"), "state", None)
    hub = getattr(state, APP_STATE_ATTRIBUTE, None)
    if isinstance(hub, PubSubHub):
        return hub
    hub = (scope.get("state") or {}).get(APP_STATE_ATTRIBUTE)
    if isinstance(hub, PubSubHub):
        return hub
    # Running hubs first: a hub entered in the app's own lifespan runs before any socket.
    for state in ("started", "new"):
        hubs = [h for h in _created_hubs if h._state == state]
        if len(hubs) > 1:
            raise ConfigurationError(
                f"{len(hubs)} PubSubHub objects exist and this socket names none: pass "
                "hub=..., or give the app's hub its lifespan (FastAPI(lifespan=hub.lifespan))"
            )
        if hubs:
            return hubs[0]
    return None


def current_hub(connection: HTTPConnection) -> PubSubHub:
    """The app's hub, as a FastAPI dependency: ``hub: PubSubHub = Depends(current_hub)``."""
    hub = hub_for(connection.scope)
    if hub is None:
        raise ConfigurationError("no PubSubHub: create one and give it the app's lifespan")
    return hub


def hub_for_socket(
    scope: Mapping[str, Any], redis_credentials: RedisCredentialsLike | None
) -> PubSubHub:
    """The hub of a socket that names none: :func:`hub_for`, or the seed's way (a hub per
    Redis URL in ``redis_credentials``, made on first use; in memory without them)."""
    app_hub = hub_for(scope)
    if redis_credentials is None:
        return app_hub if app_hub is not None else implicit_hub(None)
    url = redis_url_from(redis_credentials)
    if app_hub is None:
        return implicit_hub(url)  # the seed's way: a hub per Redis, made on first use
    if app_hub.settings.redis_url != url:
        # Publishing through the app's hub would never reach these sockets.
        raise ConfigurationError(
            f"this socket's redis_credentials ({redact_url(url)}) name another Redis than the "
            f"app's PubSubHub ({redact_url(app_hub.settings.redis_url or 'in memory')}): "
            "pass hub=... or drop redis_credentials"
        )
    return app_hub


# Hubs made implicitly for sockets built the seed's way (no hub passed, no lifespan),
# one per event loop and Redis URL.
_implicit_hubs: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str | None, PubSubHub]
] = weakref.WeakKeyDictionary()


def implicit_hub(redis_url: str | None) -> PubSubHub:
    """The shared hub for ``redis_url`` (None: in memory) in the running event loop."""
    loop = asyncio.get_running_loop()
    hubs = _implicit_hubs.setdefault(loop, {})
    hub = hubs.get(redis_url)
    if hub is None or hub._state == "stopped":
        hub = PubSubHub(redis_url)
        _created_hubs.discard(hub)  # the library's, not the application's
        hubs[redis_url] = hub
    return hub


async def close_implicit_hubs() -> None:
    """Stop the hubs made for sockets built without a hub (call it on shutdown)."""
    loop = asyncio.get_running_loop()
    hubs = _implicit_hubs.pop(loop, {})
    for hub in hubs.values():
        await hub.stop()
