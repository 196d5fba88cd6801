"""The per-app object that owns the fan-out core, its backend and their background work."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

from .backends.memory import MemoryBackend
from .backends.redis import RedisBackend, RedisCredentialsLike, redis_url_from
from .core.backend import Backend
from .core.fanout import FanOut
from .errors import HubClosedError
from .limits import InboundAllowances
from .metrics import Metrics
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
        settings = settings if settings is not None else PubSubSettings.from_env()
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
        an explicit hub find it.
        """
        setattr(app.state, APP_STATE_ATTRIBUTE, self)
        async with self:
            yield

    async def publish(self, channel: str, payload: Any) -> None:
        """Send ``payload`` to every client of ``channel`` on every worker."""
        if self._state != "started":
            await self.start()
        await self.fanout.publish(channel, payload)

    def get(self, channel: str) -> frozenset[str]:
        """Cluster-wide connection ids of ``channel`` from this worker's mirror (no I/O)."""
        return self.fanout.get(channel)

    async def members(self, channel: str) -> frozenset[str]:
        """Cluster-wide connection ids of ``channel`` read from the source of truth."""
        return await self.fanout.members(channel)

    async def count(self, channel: str) -> int:
        """Cluster-wide number of connections in ``channel`` read from the source of truth."""
        return await self.fanout.count(channel)

    def add_reconnect_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call ``hook`` after the Redis link comes back (messages in the gap were lost)."""
        self.fanout.add_reconnect_hook(hook)


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
        hubs[redis_url] = hub
    return hub


async def close_implicit_hubs() -> None:
    """Stop the hubs made for sockets built without a hub (call it on shutdown)."""
    loop = asyncio.get_running_loop()
    hubs = _implicit_hubs.pop(loop, {})
    for hub in hubs.values():
        await hub.stop()
