"""The Redis backend: its transport (envelopes over one pub/sub link per server), its
lifecycle, and the presence and history stores it composes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ...core.backend import (
    ChannelLoaded,
    ChannelReloading,
    FanOutSink,
    LinkRestored,
    new_worker_id,
)
from ...envelope import EventKind, decode_envelope
from ...errors import (
    BackendUnavailableError,
    ConfigurationError,
    HubClosedError,
    MalformedMessageError,
    PublishError,
    describe,
)
from ...metrics import Metrics
from ...settings import PubSubSettings
from ...tasks import TaskSupervisor
from . import announced
from .clients import REDIS_DOWN, RedisEndpoint
from .history_store import RedisHistoryStore
from .keys import RedisKeys
from .link import TopicLink
from .mirror_check import MirrorCheck
from .presence_store import RedisPresenceStore
from .runtime import RedisRuntime, build_runtime

logger = logging.getLogger("fastapi_pubsub_cluster")


class RedisBackend:
    """Presence and fan-out across every worker that shares one Redis (or Redis Cluster).

    The object is the backend's transport, and has its presence and history stores.

    * Each local connection is a member of its channel's set (see :class:`Presence`).
    * Joins, leaves and published messages are envelopes on the channel's topic. A worker
      holds one pub/sub link per Redis server (one in all, unless on a cluster), subscribed
      to the topics of the channels it has sockets in; it decodes each envelope once and
      hands it to the core. On a cluster, topics are shard channels (SPUBLISH/SSUBSCRIBE)
      and a channel's keys and topic share one hash slot.
    * When a link is lost it reconnects with backoff, resubscribes, registers presence
      again, reloads membership and reports :class:`LinkRestored`. Messages published
      during the gap are lost, except on history channels, which the core replays.
    """

    def __init__(
        self,
        settings: PubSubSettings,
        redis_url: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        url = redis_url or settings.redis_url
        if not url:
            raise ConfigurationError("the Redis backend needs a Redis URL")
        self.settings = settings
        self.redis_url = url
        self.keys = RedisKeys(settings.key_prefix)
        self.worker_id = new_worker_id()
        self.metrics = metrics if metrics is not None else Metrics()
        self._tasks = TaskSupervisor("redis backend")
        self._subscription_lock = asyncio.Lock()
        self._started: RedisRuntime | None = None
        self._endpoint: RedisEndpoint | None = None
        self._presence_store = RedisPresenceStore(
            lambda: self._running().presence,
            lambda: self._running().reads,
            lambda: self._started.presence if self._started is not None else None,
        )
        self._history_store = RedisHistoryStore(
            lambda: self._running().client, lambda: self._running().resume_points, self.keys
        )

    @property
    def transport(self) -> RedisBackend:
        """This object: publishing, following channels, targeted sends."""
        return self

    @property
    def presence_store(self) -> RedisPresenceStore:
        """Connections in Redis sets, one per channel."""
        return self._presence_store

    @property
    def history_store(self) -> RedisHistoryStore:
        """History channels' Redis streams."""
        return self._history_store

    # -- introspection -----------------------------------------------------------------

    @property
    def is_cluster(self) -> bool:
        """True when connected to a Redis Cluster."""
        return self._endpoint is not None and self._endpoint.is_cluster

    @property
    def link_count(self) -> int:
        """Pub/sub connections open now."""
        return self._started.links.count if self._started is not None else 0

    @property
    def reconnect_count(self) -> int:
        """Times a pub/sub link was re-established after a loss."""
        return self._started.links.reconnect_count if self._started is not None else 0

    @property
    def deaf_link_count(self) -> int:
        """Times a probe found a pub/sub link connected but not receiving."""
        return self._started.links.deaf_count if self._started is not None else 0

    @property
    def subscribed_channels(self) -> list[str]:
        """Channels this worker hears now."""
        return self._started.links.subscribed_channels() if self._started is not None else []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, sink: FanOutSink) -> None:
        """Connect, write the heartbeat and open the pub/sub link; fails if Redis is down."""
        if self._started is not None:
            return
        started = build_runtime(
            self.redis_url,
            sink,
            self.keys,
            self.settings,
            worker_id=self.worker_id,
            tasks=self._tasks,
            metrics=self.metrics,
            on_message=self._on_topic_message,
            on_restored=self._on_link_restored,
        )
        endpoint = self._endpoint = started.endpoint
        client, presence, links = started.client, started.presence, started.links
        upkeep = started.upkeep
        try:
            # Bounded as a whole: retries (and Sentinel's discovery) must not stretch an
            # unreachable Redis into a startup that hangs.
            async with asyncio.timeout(self.settings.redis_timeout * 3):
                if isinstance(client, RedisCluster):
                    await client.initialize()
                await announced.announce(client, self.keys, self.settings)
                await upkeep.beat()
                if not endpoint.is_cluster:
                    await links.open_main()
                await links.subscribe_topic(presence.directory.inbox)
        except REDIS_DOWN as exc:
            await self._close(started)
            raise BackendUnavailableError(
                f"cannot connect to Redis at {endpoint.safe_url} (PUBSUB_REDIS_URL): "
                f"{describe(exc)}"
            ) from exc
        self._started = started
        self._tasks.spawn(presence.changes.run_forever(), name="pubsub-redis-joins")
        self._tasks.spawn(upkeep.beat_forever(), name="pubsub-redis-heartbeat")
        self._tasks.spawn(upkeep.keep_forever(), name="pubsub-redis-presence")
        mirrors = MirrorCheck(client, self.keys, sink, self._reload, self.metrics)
        self._tasks.spawn(
            mirrors.keep_forever(self.settings.heartbeat_ttl / 3, links.subscribed_channels),
            name="pubsub-redis-mirrors",
        )
        logger.info("worker %s joined the cluster at %s", self.worker_id, endpoint.safe_url)

    async def stop(self) -> None:
        """Remove this worker's presence at once, stop background work, close connections."""
        started, self._started = self._started, None
        if started is None:
            return
        # Background work first: a heartbeat sent after the leave would register this
        # worker again (and take its own leave for a loss of its presence).
        await self._tasks.close()
        try:
            await started.upkeep.leave_cluster()
        except REDIS_DOWN as exc:
            logger.warning(
                "could not remove presence on shutdown (%s); peers will reap it", describe(exc)
            )
        await self._close(started)
        logger.info("worker %s left the cluster", self.worker_id)

    async def _close(self, started: RedisRuntime) -> None:
        await started.publisher.aclose()
        await started.links.close()
        await started.endpoint.aclose()

    def _running(self) -> RedisRuntime:
        if self._started is None:
            raise HubClosedError("the Redis backend is not started")
        return self._started

    # -- the backend contract ----------------------------------------------------------

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Encode once and publish once (stored first on a history channel)."""
        await self._running().publisher.publish(channel, payload, exclude)

    async def follow(self, channel: str) -> None:
        """Subscribe ``channel``'s topic (recorded first, for reaping), then report its
        members as of the channel's last event (:class:`ChannelLoaded`). A failure while
        Redis answers a fresh connection (this worker's loop stalled past the command
        timeout) is tried once more: only a Redis that does not answer fails it."""
        started = self._running()
        try:
            try:
                await self._follow(started, channel)
            except REDIS_DOWN as exc:
                if not await started.endpoint.answers():
                    raise
                logger.info("following %r failed (%s), but Redis answers: again", channel, exc)
                await self._follow(started, channel)
        except REDIS_DOWN as exc:
            raise BackendUnavailableError(
                f"cannot follow {channel!r}: Redis at {started.endpoint.safe_url} does not "
                f"answer: {describe(exc)}"
            ) from exc

    async def _follow(self, started: RedisRuntime, channel: str) -> None:
        links = started.links
        async with self._subscription_lock:  # never beside a reload of the channel
            if not links.is_subscribed(channel):
                try:
                    await started.presence.record_channel(channel)
                    await links.subscribe(channel)
                except BaseException:
                    with contextlib.suppress(*REDIS_DOWN):
                        await links.unsubscribe(channel)
                    raise
            await self._load(started, channel)

    async def unfollow(self, channel: str) -> None:
        """Unsubscribe ``channel``'s topic; if Redis does not answer, the link drops the
        topic when it reconnects."""
        started = self._started
        if started is None:
            return  # stopped: every subscription is gone already
        try:
            async with self._subscription_lock:
                if started.links.is_subscribed(channel):
                    started.presence.vacate(channel)
                    await started.links.unsubscribe(channel)
        except REDIS_DOWN as exc:
            logger.debug("unsubscribe from %r failed: %s", channel, describe(exc))

    async def send(self, worker_id: str, connection_ids: Sequence[str], payload: Any) -> int:
        """A DIRECT envelope to ``worker_id``'s inbox, if it holds any of the connections."""
        try:
            return await self._running().presence.directory.send(worker_id, connection_ids, payload)
        except REDIS_DOWN as exc:
            raise PublishError(f"cannot send, Redis unavailable: {describe(exc)}") from exc

    @property
    def instance(self) -> str | None:
        """Who owns this worker's presence entries now (its id and epoch); None if stopped."""
        return self._started.presence.instance if self._started is not None else None

    async def reap(self, worker_id: str) -> int:
        """Remove the presence of ``worker_id`` now, even if its heartbeat lives (an
        operator's tool for a worker known to be gone); how many entries went."""
        upkeep = self._running().upkeep
        removed = 0
        for instance in await upkeep.reaper.instances_of(worker_id):
            removed += max(0, await upkeep.reap(instance, force=True))
        return removed

    # -- subscriptions -----------------------------------------------------------------

    async def _reload(self, channel: str) -> None:
        """Load ``channel``'s membership again, keeping the events heard meanwhile."""
        started = self._running()
        async with self._subscription_lock:  # not while the channel is being dropped
            if started.links.is_subscribed(channel):
                started.sink.receive(ChannelReloading(channel))
                # If this fails, the next check or the link's restore loads it.
                await self._load(started, channel)

    async def _load(self, started: RedisRuntime, channel: str) -> None:
        members, seq, metadata = await started.reads.snapshot(channel)
        started.sink.receive(ChannelLoaded(channel, members, seq, metadata))

    def _on_topic_message(self, topic: str, data: bytes) -> None:
        started = self._started
        if started is None:
            return
        try:
            envelope = decode_envelope(data)
        except MalformedMessageError as exc:
            logger.warning("ignored a payload on %s that is not an envelope: %s", topic, exc)
            return
        if envelope.kind is EventKind.DIRECT:
            if topic == started.presence.directory.inbox:
                started.sink.receive(envelope)
            else:
                logger.warning("ignored a direct envelope on %s", topic)
            return
        if topic != self.keys.topic(envelope.channel):
            logger.warning("ignored an envelope for %r on topic %s", envelope.channel, topic)
            return
        started.sink.receive(envelope)

    async def _on_link_restored(self, link: TopicLink) -> None:
        """Runs in the link's task before it reads again: presence and mirrors first."""
        started = self._running()
        channels = started.links.channels_on(link)
        await started.upkeep.beat()  # first: presence without a heartbeat is reaped
        await started.upkeep.settle(channels)
        for channel in channels:
            await self._load(started, channel)
        started.sink.receive(LinkRestored(tuple(channels)))
