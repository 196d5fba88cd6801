"""One pub/sub connection to one Redis server, kept alive and honest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ...errors import BackendUnavailableError
from ...metrics import Metrics
from ...settings import PubSubSettings
from ...tasks import TaskSupervisor
from .clients import REDIS_DOWN

logger = logging.getLogger("fastapi_pubsub_cluster")


class TopicLink:
    """A pub/sub connection subscribed to a set of topics, read by one task.

    When the connection fails, or a probe (a message to itself on ``probe_topic``) does not
    come back in time although Redis took it, the link drops the connection, reconnects with
    backoff, subscribes to its topics again and awaits ``on_restored``, so that the owner can
    register presence again and tell the application. Messages go to ``on_message``.
    With ``sharded`` it uses SSUBSCRIBE (Redis Cluster shard channels).
    """

    def __init__(
        self,
        *,
        name: str,
        connect: Callable[[], Redis],
        sharded: bool,
        probe_topic: str,
        publish: Callable[[str, bytes], Awaitable[int]],
        on_message: Callable[[str, bytes], None],
        on_restored: Callable[[TopicLink], Awaitable[None]],
        settings: PubSubSettings,
        tasks: TaskSupervisor,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.topics: set[str] = set()
        self.probe_topic = probe_topic
        #: Times the link was re-established after a loss, and found deaf by a probe.
        self.reconnect_count = 0
        self.deaf_count = 0
        self._connect = connect
        self._sharded = sharded
        self._publish = publish
        self._on_message = on_message
        self._on_restored = on_restored
        self._settings = settings
        self._tasks = tasks
        self._metrics = metrics
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._probe: tuple[bytes, asyncio.Future[None]] | None = None
        #: Messages the link has read (a probe that is late on a link still reading is
        #: a busy worker's, not a deaf link's).
        self.messages_read = 0

    async def open(self) -> None:
        """Connect and subscribe; raises if Redis cannot be reached."""
        async with self._lock:
            await self._connect_and_subscribe()

    def start(self) -> None:
        """Start reading (and probing) in tasks owned by the manager's supervisor."""
        self._listener = self._tasks.spawn(self._listen_forever(), name=f"pubsub-link-{self.name}")
        if self._settings.probe_interval > 0:
            self._prober = self._tasks.spawn(
                self._probe_forever(), name=f"pubsub-probe-{self.name}"
            )

    async def close(self) -> None:
        """Stop the tasks and close the connection."""
        for task in (self._prober, self._listener):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop()
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await client.aclose(close_connection_pool=True)

    async def subscribe(self, topic: str) -> None:
        """Add ``topic``; waits (bounded) for the link if it is reconnecting."""
        await self._when_up()
        async with self._lock:
            if topic in self.topics:
                return
            pubsub = self._require()
            self.topics.add(topic)
            try:
                await (pubsub.ssubscribe(topic) if self._sharded else pubsub.subscribe(topic))
            except BaseException:
                self.topics.discard(topic)
                raise

    async def unsubscribe(self, topic: str) -> None:
        """Remove ``topic``."""
        async with self._lock:
            if topic not in self.topics:
                return
            self.topics.discard(topic)
            pubsub = self._pubsub
            if pubsub is not None:
                await (pubsub.sunsubscribe(topic) if self._sharded else pubsub.unsubscribe(topic))

    async def _when_up(self) -> None:
        async with asyncio.timeout(self._settings.redis_timeout * 2):
            await self._up.wait()

    def _require(self) -> PubSub:
        if self._pubsub is None:
            raise BackendUnavailableError(f"the Redis link {self.name} is down")
        return self._pubsub

    async def _connect_and_subscribe(self) -> None:
        # A fresh client each time: ``connect`` may resolve a new primary after a failover.
        await self._close_client()
        self._client = self._connect()
        # RESP2 (LINK_PROTOCOL): messages are plain arrays, with no push handler to run.
        pubsub = self._client.pubsub()
        topics = [self.probe_topic, *self.topics]
        try:
            if self._sharded:
                # One SSUBSCRIBE per topic: a link's topics live in several slots of its
                # shard, and Redis refuses an SSUBSCRIBE across slots (CROSSSLOT).
                for topic in topics:
                    await pubsub.ssubscribe(topic)
            else:
                await pubsub.subscribe(*topics)
        except BaseException:
            with contextlib.suppress(*REDIS_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            raise
        self._pubsub = pubsub
        self._up.set()

    async def _drop(self) -> None:
        self._up.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def _listen_forever(self) -> None:
        delay = self._settings.reconnect_delay_initial
        while True:
            try:
                if self._pubsub is None:
                    async with self._lock:
                        await self._connect_and_subscribe()
                    self.reconnect_count += 1
                    logger.warning(
                        "Redis link %s re-established (reconnect #%d); messages published "
                        "while it was down were not delivered",
                        self.name,
                        self.reconnect_count,
                    )
                    await self._on_restored(self)
                delay = self._settings.reconnect_delay_initial
                await self._pump()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                await self._drop()
                logger.warning(
                    "Redis link %s lost (%s: %s); reconnecting in %.2fs",
                    self.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.reconnect_delay_max)
            except Exception:
                # A bug, or a reply nobody expected: never let the listener end quietly.
                logger.exception("Redis link %s failed; renewing it", self.name)
                self._metrics.loop_restarted("link")
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.reconnect_delay_max)

    async def _pump(self) -> None:
        """Read messages until the connection fails (or the task is cancelled).

        Messages are read straight from the connection (redis-py's parser), not through
        ``PubSub.get_message``, whose per-call retry and bookkeeping cost more than the
        rest of a broadcast on a worker. Subscription replies still go through
        ``PubSub.handle_message``, which keeps its bookkeeping right. No read timeout:
        a silent connection is the probes' business.
        """
        pubsub = self._require()
        connection: Any = pubsub.connection  # set by the subscribe in _connect_and_subscribe
        if connection is None:
            raise BackendUnavailableError(f"the Redis link {self.name} has no connection")
        kind = b"smessage" if self._sharded else b"message"
        probe_topic = self.probe_topic
        read = connection.read_response
        on_message = self._on_message
        # Topic bytes -> name, for the few topics a link carries (not decoded per message).
        names: dict[bytes, str] = {}
        while True:
            # Returns without waiting while the parser has a whole reply buffered: every
            # pending message is dispatched before the task yields to the loop again.
            response = await read(timeout=math.inf, disconnect_on_error=False, push_request=True)
            if type(response) is not list or len(response) != 3 or response[0] != kind:
                await pubsub.handle_message(  # type: ignore[no-untyped-call, unused-ignore]
                    response, ignore_subscribe_messages=True
                )
                continue
            self.messages_read += 1
            _, topic, data = response
            name = names.get(topic)
            if name is None:
                name = topic.decode(errors="replace") if isinstance(topic, bytes) else str(topic)
                if len(names) > 4096:  # topics come and go: keep the cache bounded
                    names.clear()
                names[topic] = name
            if name == probe_topic:
                probe = self._probe
                if probe is not None and data == probe[0] and not probe[1].done():
                    probe[1].set_result(None)
                continue
            on_message(name, data)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.probe_interval)
            try:
                await self._probe_once()
            except Exception:  # never let the prober end quietly
                logger.exception("probe of Redis link %s failed", self.name)
                self._metrics.loop_restarted("probe")

    async def _probe_once(self) -> None:
        if self._up.is_set() and not await self._hears_itself():
            self.deaf_count += 1
            self._metrics.deaf_link_detected()
            logger.warning(
                "Redis link %s is deaf (probe not back within %.1fs); renewing it",
                self.name,
                self._settings.probe_timeout,
            )
            await self._renew()

    async def _hears_itself(self) -> bool:
        token = uuid.uuid4().hex.encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probe = (token, waiter)
        read_before = self.messages_read
        try:
            try:
                receivers = await self._publish(self.probe_topic, token)
            except REDIS_DOWN:
                return True  # Redis itself is unreachable: the listener sees that
            if receivers == 0:
                return False  # Redis no longer knows our subscription
            await asyncio.wait({waiter}, timeout=self._settings.probe_timeout)
            # Not back in time, yet the link read something meanwhile: it hears, and only
            # this worker is behind (a storm keeps it busy). Liveness never waits on load.
            return waiter.done() or self.messages_read != read_before
        finally:
            self._probe = None

    async def _renew(self) -> None:
        listener = self._listener
        if listener is not None and not listener.done():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        await self._drop()
        self._listener = self._tasks.spawn(self._listen_forever(), name=f"pubsub-link-{self.name}")
