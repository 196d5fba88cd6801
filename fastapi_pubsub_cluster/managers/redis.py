"""Cluster-wide manager: presence in Redis, events over one pub/sub link per Redis server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ..codec import (
    Envelope,
    EventKind,
    OutgoingFrame,
    decode_envelope,
    decode_stored,
    stored_message_frame,
    stream_id_order,
)
from ..connection import ClientConnection
from ..errors import ConfigurationError, MalformedMessageError, PublishError
from ..keys import RedisKeys
from ..metrics import Metrics
from ..publication import prepare_publication
from ..redaction import redact_url
from ..redis_clients import CommandClient, RedisEndpoint
from ..settings import PubSubSettings
from . import _scripts
from ._link import REDIS_DOWN, TopicLink
from .base import ConnectionManager

logger = logging.getLogger("fastapi_pubsub_cluster")

ReconnectHook = Callable[[], Awaitable[None]]

# Redis connections one worker may hold for commands (per shard on a cluster), besides its
# pub/sub link (one per Redis server that holds any of its channels).
MAX_REDIS_CONNECTIONS = 8

# Atomically claims a worker's presence for reaping: nothing if its heartbeat lives (unless
# forced), else the channels it had, which are then forgotten. KEYS: heartbeat, channels set.
_CLAIM = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return false end
local channels = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return channels
"""


class RedisConnectionManager(ConnectionManager):
    """Presence and fan-out across every worker that shares one Redis (or Redis Cluster).

    * Each local connection is a member of its channel's set, with its worker recorded as
      owner; a heartbeat key with a TTL lets live workers reap the presence of dead ones.
    * Joins, leaves and published messages are envelopes on the channel's topic. A worker
      holds one pub/sub link per Redis server (one in all, unless on a cluster), subscribed
      to the topics of the channels it has sockets in; it decodes each envelope once and
      fans it out locally. On a cluster, topics are shard channels (SPUBLISH/SSUBSCRIBE)
      and a channel's keys and topic share one hash slot.
    * When a link is lost it reconnects with backoff, resubscribes, registers presence
      again, reloads membership, replays history where a channel keeps it, and calls the
      ``on_reconnect`` hooks. Other messages published during the gap are lost.
    """

    def __init__(
        self,
        settings: PubSubSettings,
        redis_url: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(settings, metrics)
        url = redis_url or settings.redis_url
        if not url:
            raise ConfigurationError("RedisConnectionManager needs a Redis URL")
        self.redis_url = url
        self.keys = RedisKeys(settings.key_prefix)
        #: Called after every re-subscription that follows a lost link.
        self.on_reconnect: list[ReconnectHook] = []
        self._endpoint: RedisEndpoint | None = None
        self._redis: CommandClient | None = None
        self._links: dict[str, TopicLink] = {}
        self._channel_links: dict[str, TopicLink] = {}
        self._subscription_lock = asyncio.Lock()
        self._loading: dict[str, list[Envelope]] = {}
        self._seq: dict[str, int] = {}
        self._recorded_channels: set[str] = set()
        self._unannounced_leaves: dict[str, ClientConnection] = {}
        # Newest stored message delivered per channel with history: replay after a lost
        # link starts there, and older or repeated ids are never delivered twice.
        self._last_stored: dict[str, str] = {}
        self._running = False

    @property
    def reconnect_count(self) -> int:
        """Times a pub/sub link was re-established after a loss."""
        return sum(link.reconnect_count for link in self._links.values())

    @property
    def deaf_link_count(self) -> int:
        """Times a probe found a link connected but not receiving."""
        return sum(link.deaf_count for link in self._links.values())

    @property
    def is_cluster(self) -> bool:
        """True when connected to a Redis Cluster."""
        return self._endpoint is not None and self._endpoint.is_cluster

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, write the heartbeat and open the pub/sub link; fails if Redis is down."""
        if self._running:
            return
        self._endpoint = RedisEndpoint(
            self.redis_url, self.settings, client_name=f"{self.keys.prefix}:{self.worker_id}"
        )
        client = self._endpoint.command_client(MAX_REDIS_CONNECTIONS)
        self._redis = client
        self._join_script = client.register_script(_scripts.JOIN)
        self._leave_script = client.register_script(_scripts.LEAVE)
        self._reap_channel_script = client.register_script(_scripts.REAP_CHANNEL)
        self._snapshot_script = client.register_script(_scripts.SNAPSHOT)
        self._store_script = client.register_script(_scripts.STORE)
        self._claim_script = client.register_script(_CLAIM)
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
            await self._beat()
            if not self._endpoint.is_cluster:
                endpoint = self._endpoint
                await self._open_link("main", endpoint.link_client, self.worker_id)
        except REDIS_DOWN as exc:
            await self._close_redis()
            raise PublishError(f"cannot connect to Redis at {self._safe_url}: {exc}") from exc
        self._running = True
        self._tasks.spawn(self._maintain_presence(), name="pubsub-redis-heartbeat")
        logger.info("worker %s joined the cluster at %s", self.worker_id, self._safe_url)

    async def stop(self) -> None:
        """Remove this worker's presence at once, close sockets with 1001, stop tasks."""
        if not self._running:
            await self._close_redis()
            return
        self._running = False
        try:
            await self._reap(self.worker_id, force=True)
        except REDIS_DOWN as exc:
            logger.warning("could not remove presence on shutdown (%r); peers will reap it", exc)
        # Presence is gone already: the sockets' own leaves would only find nothing to do.
        self._unannounced_leaves.clear()
        await self._stop_local()
        await self._close_redis()
        logger.info("worker %s left the cluster", self.worker_id)

    async def _close_redis(self) -> None:
        links, self._links = list(self._links.values()), {}
        self._channel_links.clear()
        for link in links:
            await link.close()
        if self._endpoint is not None:
            await self._endpoint.aclose()
        self._redis = self._endpoint = None

    @property
    def _safe_url(self) -> str:
        # Never log a password.
        return redact_url(self.redis_url)

    def _client(self) -> CommandClient:
        if self._redis is None:
            raise PublishError("the Redis connection manager is not started")
        return self._redis

    @property
    def _publish_command(self) -> str:
        return "SPUBLISH" if self.is_cluster else "PUBLISH"

    async def _publish_raw(self, topic: str, data: bytes) -> int:
        client = self._client()
        if isinstance(client, RedisCluster):
            return int(await client.spublish(topic, data))
        return int(await client.publish(topic, data))

    # -- membership --------------------------------------------------------------------

    async def _announce_join(self, connection: ClientConnection, notify: bool) -> None:
        try:
            await self._sync_subscription(connection.channel)
            await self._run_membership_script(self._join_script, connection, notify)
        except REDIS_DOWN as exc:
            raise PublishError(f"cannot register the connection, Redis unavailable: {exc}") from exc

    async def _announce_leave(self, connection: ClientConnection, notify: bool) -> None:
        try:
            await self._run_membership_script(self._leave_script, connection, notify)
        except REDIS_DOWN as exc:
            # Retried when the link is back, so the entry does not stay behind.
            self._unannounced_leaves[connection.id] = connection
            logger.warning("leave of %s not recorded yet (%r); retrying later", connection.id, exc)
        try:
            await self._sync_subscription(connection.channel)
        except REDIS_DOWN as exc:
            logger.debug("unsubscribe from %r failed: %r", connection.channel, exc)

    async def _record_channel(self, channel: str) -> None:
        """Note, under the worker's own key, that it holds sockets in ``channel``, so that a
        peer can find them if this worker dies."""
        await self._client().sadd(self.keys.worker_channels(self.worker_id), channel)
        self._recorded_channels.add(channel)

    async def _run_membership_script(
        self, script: Any, connection: ClientConnection, notify: bool
    ) -> None:
        channel = connection.channel
        await script(
            keys=[self.keys.members(channel), self.keys.seq(channel), self.keys.owners(channel)],
            args=[
                self._publish_command,
                self.keys.topic(channel),
                channel,
                self.worker_id,
                connection.id,
                "1" if notify else "0",
                _scripts.SEQ_IDLE_TTL_MS,
            ],
        )

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``, read from Redis."""
        try:
            raw = await self._client().smembers(self.keys.members(channel))
        except REDIS_DOWN as exc:
            raise PublishError(f"cannot read presence, Redis unavailable: {exc}") from exc
        return frozenset(_text(m) for m in raw)

    # -- publishing and history --------------------------------------------------------

    async def publish(self, channel: str, payload: Any) -> None:
        """Encode once and publish once; raises PublishError within a bound if Redis is down.

        On a channel with history the message is also appended to its stream, in the same
        atomic step, and announced with its stream id.
        """
        publication = prepare_publication(
            self.settings,
            channel,
            payload,
            origin=self.worker_id,
            publish_command=self._publish_command,
        )
        try:
            async with asyncio.timeout(self.settings.redis_timeout * 2):
                if publication.stream_key is None:
                    await self._publish_raw(publication.topic, publication.data)
                else:
                    await self._store_script(
                        keys=[publication.stream_key], args=publication.script_args
                    )
        except REDIS_DOWN as exc:
            raise PublishError(f"cannot publish to {channel!r}, Redis unavailable: {exc}") from exc
        self.metrics.published()

    async def _history_after(
        self, channel: str, since: str
    ) -> tuple[list[tuple[str, Any]], str | None, bool]:
        key = self.keys.history(channel)
        client = self._client()
        try:
            entries = await client.xrange(key, min=f"({since}", max="+")
            info = await client.xinfo_stream(key) if entries or await client.exists(key) else None
        except REDIS_DOWN as exc:
            raise PublishError(f"cannot read history, Redis unavailable: {exc}") from exc
        replay = []
        for stream_id, fields in entries or []:
            try:
                replay.append((_text(stream_id or b""), decode_stored(fields or {})))
            except MalformedMessageError as exc:
                logger.warning("skipped history entry %r of %r: %s", stream_id, channel, exc)
        if info is None:
            return replay, None, False  # expired or never written: cannot vouch for the gap
        first = info.get("first-entry")
        oldest = _text(first[0]) if first else None
        # Trimming removes the oldest entries, and the stream does not record their ids: the
        # history reaches back to ``since`` if nothing was ever removed, or if ``since`` is
        # still kept. (A ``since`` that was itself trimmed counts as a gap: safe, as the
        # client then resyncs.)
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        max_deleted = _text(info.get("max-deleted-entry-id") or b"0-0")
        reaches_back = not trimmed or (
            oldest is not None and stream_id_order(oldest) <= stream_id_order(since)
        )
        complete = reaches_back and stream_id_order(max_deleted) <= stream_id_order(since)
        return replay, oldest, complete

    # -- the pub/sub links -------------------------------------------------------------

    async def _open_link(self, name: str, connect: Callable[[], Any], probe_tag: str) -> TopicLink:
        link = TopicLink(
            name=name,
            connect=connect,
            sharded=self.is_cluster,
            probe_topic=self.keys.probe_topic(self.worker_id, probe_tag),
            publish=self._publish_raw,
            on_message=self._on_topic_message,
            on_restored=self._on_link_restored,
            settings=self.settings,
            tasks=self._tasks,
        )
        await link.open()
        self._links[name] = link
        link.start()
        return link

    async def _link_for(self, channel: str) -> TopicLink:
        """The link that carries ``channel``'s topic (on a cluster: its shard's)."""
        client = self._client()
        if not isinstance(client, RedisCluster):
            return self._links["main"]
        node = client.get_node_from_key(self.keys.topic(channel))
        if node is None:
            raise PublishError(f"no cluster node serves channel {channel!r}")
        link = self._links.get(node.name)
        if link is not None:
            return link
        tag = self._probe_tag_on(client, node.name)
        probe_key = self.keys.probe_topic(self.worker_id, tag)
        assert self._endpoint is not None
        endpoint = self._endpoint

        def connect() -> Any:
            # Whoever serves the probe's slot now: after a failover, the promoted replica.
            owner = client.get_node_from_key(probe_key) or node
            return endpoint.node_link_client(owner.host, int(owner.port))

        return await self._open_link(node.name, connect, tag)

    def _probe_tag_on(self, client: RedisCluster, node_name: str) -> str:
        """A hash tag whose slot the node serves, so that its probes travel its link."""
        for attempt in range(100_000):
            tag = f"{self.worker_id}-{attempt}"
            node = client.get_node_from_key(self.keys.probe_topic(self.worker_id, tag))
            if node is not None and node.name == node_name:
                return tag
        raise PublishError(f"cluster node {node_name} serves no slot")

    async def _sync_subscription(self, channel: str) -> None:
        """Subscribe to a channel's topic while it has local sockets, unsubscribe after.

        Under one lock, so that concurrent first joins and last leaves cannot interleave
        their subscribe and unsubscribe.
        """
        async with self._subscription_lock:
            wanted = channel in self._local
            link = self._channel_links.get(channel)
            if wanted and link is None:
                link = await self._link_for(channel)
                self._channel_links[channel] = link
                self._loading[channel] = []
                try:
                    await self._record_channel(channel)
                    await link.subscribe(self.keys.topic(channel))
                    await self._load_membership(channel)
                except BaseException:
                    self._channel_links.pop(channel, None)
                    self._loading.pop(channel, None)
                    raise
            elif not wanted and link is not None:
                del self._channel_links[channel]
                self._members.pop(channel, None)
                self._seq.pop(channel, None)
                self._last_stored.pop(channel, None)
                self._recorded_channels.discard(channel)
                await link.unsubscribe(self.keys.topic(channel))
                await self._client().srem(self.keys.worker_channels(self.worker_id), channel)

    async def _load_membership(self, channel: str) -> None:
        """Replace the mirror of ``channel`` with Redis' set, then apply what arrived meanwhile."""
        raw_members, raw_seq = await self._snapshot_script(
            keys=[self.keys.members(channel), self.keys.seq(channel)]
        )
        self._members[channel] = {self._shared_id(channel, _text(m)) for m in raw_members}
        self._seq[channel] = int(raw_seq or 0)
        for envelope in self._loading.pop(channel, []):
            self._apply_membership_event(envelope)

    async def _on_link_restored(self, link: TopicLink) -> None:
        """Runs in the link's task before it reads again: presence, mirrors, history, hooks."""
        channels = [c for c, owner in self._channel_links.items() if owner is link]
        # The heartbeat first: presence of a worker without one would be reaped.
        await self._beat(repair=False)
        await self._register_presence(channels)
        for channel in channels:
            self._loading[channel] = []
            await self._load_membership(channel)
            await self._replay_missed(channel)
            self._schedule_regeneration(channel)
        self.metrics.redis_reconnected()
        for hook in list(self.on_reconnect):
            try:
                await hook()
            except Exception:
                logger.exception("on_reconnect hook %r failed", hook)
        await self._notify_link_restored(channels)

    async def _register_presence(self, channels: list[str]) -> None:
        """(Re-)register the local connections of ``channels``; retry leaves that failed."""
        for connection in list(self._unannounced_leaves.values()):
            await self._run_membership_script(self._leave_script, connection, True)
            self._unannounced_leaves.pop(connection.id, None)
        for channel in channels:
            await self._record_channel(channel)
            for connection in self.local_connections(channel):
                await self._run_membership_script(self._join_script, connection, True)

    def _on_topic_message(self, topic: str, data: bytes) -> None:
        try:
            envelope = decode_envelope(data)
        except MalformedMessageError as exc:
            logger.warning("ignored a payload on %s that is not an envelope: %s", topic, exc)
            return
        if topic != self.keys.topic(envelope.channel):
            logger.warning("ignored an envelope for %r on topic %s", envelope.channel, topic)
            return
        if envelope.kind is EventKind.MESSAGE:
            self._deliver(envelope.channel, OutgoingFrame(envelope.payload), envelope.sent_at)
        elif envelope.kind is EventKind.STORED:
            self._deliver_stored(envelope.channel, envelope.ref, envelope.payload, envelope.sent_at)
        elif (buffered := self._loading.get(envelope.channel)) is not None:
            buffered.append(envelope)
        else:
            self._apply_membership_event(envelope)

    def _deliver_stored(
        self, channel: str, stream_id: str, payload: Any, sent_at: float = 0.0
    ) -> None:
        last = self._last_stored.get(channel)
        if last is not None and stream_id_order(stream_id) <= stream_id_order(last):
            return  # already delivered by a replay
        self._last_stored[channel] = stream_id
        self._deliver(channel, stored_message_frame(stream_id, payload), sent_at)

    async def _replay_missed(self, channel: str) -> None:
        """After a lost link, deliver what the channel stored meanwhile (history channels)."""
        last = self._last_stored.get(channel)
        if last is None or not self.settings.has_history(channel):
            return
        entries, _, _ = await self._history_after(channel, last)
        for stream_id, payload in entries:
            self._deliver_stored(channel, stream_id, payload)
        if entries:
            logger.info("replayed %d missed messages on %r", len(entries), channel)

    def _apply_membership_event(self, envelope: Envelope) -> None:
        channel = envelope.channel
        if channel not in self._channel_links or envelope.seq <= self._seq.get(channel, 0):
            return  # not ours any more, or already part of the loaded snapshot
        self._seq[channel] = envelope.seq
        notify = bool(envelope.payload)
        if envelope.kind is EventKind.JOIN:
            self._apply_join(channel, envelope.ref, notify)
        else:
            self._apply_leave(channel, envelope.ref, notify)

    # -- heartbeat and reaping ---------------------------------------------------------

    async def _maintain_presence(self) -> None:
        interval = self.settings.heartbeat_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._beat()
                await self._reap_dead_workers()
            except REDIS_DOWN as exc:
                logger.warning("heartbeat failed (%r); retrying in %.1fs", exc, interval)

    async def _beat(self, *, repair: bool = True) -> None:
        """Renew the heartbeat; with ``repair``, register presence again if it was lost."""
        client = self._client()
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.heartbeat(self.worker_id), "1", px=ttl_ms, get=True)
            pipe.sadd(self.keys.workers, self.worker_id)
            pipe.exists(self.keys.worker_channels(self.worker_id))
            previous, _, recorded = await pipe.execute()
        reaped = previous is None or (self._recorded_channels and not recorded)
        links_up = all(link.is_up for link in self._links.values())
        if repair and reaped and self._running and self._local and links_up:
            # Our heartbeat had expired (event loop stalled, or Redis restarted): a peer may
            # have reaped our presence, so register it again.
            logger.warning("presence of %s was lost; registering it again", self.worker_id)
            await self._register_presence(list(self._channel_links))

    async def _reap_dead_workers(self) -> None:
        client = self._client()
        workers = [_text(w) for w in await client.smembers(self.keys.workers)]
        others = [w for w in workers if w != self.worker_id]
        if not others:
            return
        async with client.pipeline(transaction=False) as pipe:
            for worker in others:
                pipe.exists(self.keys.heartbeat(worker))
            alive = await pipe.execute()
        for worker, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                removed = await self._reap(worker, force=False)
                if removed >= 0:
                    logger.warning("reaped %d connections of dead worker %s", removed, worker)

    async def _reap(self, worker_id: str, *, force: bool) -> int:
        """Remove a worker's presence from every channel it held; -1 if it turned out alive.

        The claim is atomic on the worker's own slot, the per-channel removals are not (they
        live on other slots). A worker that was only stalled finds its channel record gone
        at its next heartbeat and registers again; should that registration overlap this
        loop, entries it re-adds can be removed until its next change (a narrow window,
        accepted for now).
        """
        channels = await self._claim_script(
            keys=[self.keys.heartbeat(worker_id), self.keys.worker_channels(worker_id)],
            args=["1" if force else "0"],
        )
        if channels is None:
            return -1
        removed = 0
        for raw in channels:
            channel = _text(raw)
            removed += int(
                await self._reap_channel_script(
                    keys=[
                        self.keys.members(channel),
                        self.keys.seq(channel),
                        self.keys.owners(channel),
                    ],
                    args=[
                        self._publish_command,
                        self.keys.topic(channel),
                        channel,
                        self.worker_id,
                        worker_id,
                        _scripts.SEQ_IDLE_TTL_MS,
                    ],
                )
            )
        await self._client().srem(self.keys.workers, worker_id)
        return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
