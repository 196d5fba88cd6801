"""Cluster-wide manager: presence in Redis sets, events over one pub/sub link per worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ..codec import (
    Envelope,
    EventKind,
    OutgoingFrame,
    decode_envelope,
    decode_stored,
    encode_envelope,
    encode_payload,
    packed_timestamp,
    stored_envelope_head,
    stored_message_frame,
    stream_id_order,
)
from ..connection import ClientConnection
from ..errors import ConfigurationError, MalformedMessageError, MessageTooLargeError, PublishError
from ..keys import RedisKeys
from ..metrics import Metrics
from ..redis_clients import RedisEndpoint
from ..settings import PubSubSettings
from . import _scripts
from .base import ConnectionManager

logger = logging.getLogger("fastapi_pubsub_cluster")

ReconnectHook = Callable[[], Awaitable[None]]

# Errors that mean "Redis is not answering", as opposed to bugs.
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)

# Redis connections one worker may hold for commands, besides its one pub/sub link.
MAX_REDIS_CONNECTIONS = 8


class RedisConnectionManager(ConnectionManager):
    """Presence and fan-out across every worker that shares one Redis.

    * Each local connection is a member of ``<prefix>:channel:<id>`` and of its worker's
      hash; a heartbeat key with a TTL lets live workers reap the presence of dead ones.
    * Joins, leaves and published messages are envelopes on ``<prefix>:topic:<id>``.
      Each worker holds one pub/sub connection, subscribed to the topics of the channels
      it has sockets in, decodes each envelope once and fans it out locally.
    * When Redis goes away the link reconnects with backoff, resubscribes, registers its
      presence again, reloads membership and calls the ``on_reconnect`` hooks. Messages
      published during the gap are lost (pub/sub is at-most-once).
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
        #: Called after every successful re-subscription that follows a lost link.
        self.on_reconnect: list[ReconnectHook] = []
        #: How many times the link was re-established after a loss.
        self.reconnect_count = 0
        #: How many times a probe found the link deaf (connected, but not receiving).
        self.deaf_link_count = 0
        self._listener: asyncio.Task[None] | None = None
        self._probe: tuple[bytes, asyncio.Future[None]] | None = None
        self._redis: Redis | None = None
        self._link_client: Redis | None = None
        self._endpoint: RedisEndpoint | None = None
        self._pubsub: PubSub | None = None
        self._control_topic = f"{self.keys.prefix}:control:{self.worker_id}"
        self._subscribed: set[str] = set()
        self._loading: dict[str, list[Envelope]] = {}
        self._seq: dict[str, int] = {}
        self._unannounced_leaves: dict[str, ClientConnection] = {}
        # Newest stored message delivered per channel with history: replay after a lost
        # link starts there, and older or repeated ids are never delivered twice.
        self._last_stored: dict[str, str] = {}
        self._link_lock = asyncio.Lock()
        self._link_up = asyncio.Event()
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Redis, write the heartbeat and start the listener; fails if Redis is down."""
        if self._running:
            return
        self._endpoint = RedisEndpoint(
            self.redis_url, self.settings, client_name=f"{self.keys.prefix}:{self.worker_id}"
        )
        self._redis = self._endpoint.command_client(MAX_REDIS_CONNECTIONS)
        self._link_client = self._endpoint.link_client()
        self._join_script = self._redis.register_script(_scripts.JOIN)
        self._leave_script = self._redis.register_script(_scripts.LEAVE)
        self._reap_script = self._redis.register_script(_scripts.REAP)
        self._store_script = self._redis.register_script(_scripts.STORE)
        try:
            await self._open_link()
        except REDIS_DOWN as exc:
            await self._close_redis()
            raise PublishError(f"cannot connect to Redis at {self._safe_url}: {exc}") from exc
        self._running = True
        self._listener = self._tasks.spawn(self._listen_forever(), name="pubsub-redis-listener")
        self._tasks.spawn(self._maintain_presence(), name="pubsub-redis-heartbeat")
        if self.settings.probe_interval > 0:
            self._tasks.spawn(self._probe_link_forever(), name="pubsub-redis-probe")
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
        await self._drop_link()
        if self._endpoint is not None:
            await self._endpoint.aclose()
        self._redis = self._link_client = self._endpoint = None

    @property
    def _safe_url(self) -> str:
        # Never log a password.
        head, sep, tail = self.redis_url.rpartition("@")
        return f"{head.split('://')[0]}://***@{tail}" if sep else self.redis_url

    def _client(self) -> Redis:
        if self._redis is None:
            raise PublishError("the Redis connection manager is not started")
        return self._redis

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
        with contextlib.suppress(*REDIS_DOWN):
            await self._sync_subscription(connection.channel)

    async def _run_membership_script(
        self, script: Any, connection: ClientConnection, notify: bool
    ) -> None:
        channel = connection.channel
        await script(
            keys=[
                self.keys.members(channel),
                self.keys.seq(channel),
                self.keys.worker_connections(self.worker_id),
            ],
            args=[
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

    async def publish(self, channel: str, payload: Any) -> None:
        """Encode once and PUBLISH once; raises PublishError within a bound if Redis is down.

        On a channel with history the message is also appended to its stream, in the same
        atomic step, and announced with its stream id.
        """
        self.settings.validate_channel_id(channel)
        if self.settings.has_history(channel):
            data = encode_payload(payload)
        else:
            data = encode_envelope(
                Envelope(
                    EventKind.MESSAGE,
                    channel,
                    self.worker_id,
                    uuid.uuid4().hex,
                    0,
                    payload,
                    time.time(),
                )
            )
        if len(data) > self.settings.max_message_bytes:
            raise MessageTooLargeError(
                f"message is {len(data)} bytes; the limit is {self.settings.max_message_bytes}"
            )
        try:
            async with asyncio.timeout(self.settings.redis_timeout * 2):
                if self.settings.has_history(channel):
                    await self._store(channel, data)
                else:
                    await self._client().publish(self.keys.topic(channel), data)
        except REDIS_DOWN as exc:
            raise PublishError(f"cannot publish to {channel!r}, Redis unavailable: {exc}") from exc
        self.metrics.published()

    async def _store(self, channel: str, payload: bytes) -> None:
        await self._store_script(
            keys=[self.keys.history(channel)],
            args=[
                self.keys.topic(channel),
                stored_envelope_head(channel, self.worker_id),
                payload,
                self.settings.history_size,
                int(self.settings.history_ttl * 1000),
                packed_timestamp(time.time()),
            ],
        )

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

    # -- the pub/sub link --------------------------------------------------------------

    async def _sync_subscription(self, channel: str) -> None:
        """Subscribe to a channel's topic while it has local sockets, unsubscribe after.

        Under one lock, so that concurrent first joins and last leaves cannot interleave
        their SUBSCRIBE and UNSUBSCRIBE.
        """
        async with asyncio.timeout(self.settings.redis_timeout * 2):
            await self._link_up.wait()
        async with self._link_lock:
            pubsub = self._pubsub
            if pubsub is None:
                raise PublishError("the Redis link is down")
            wanted = channel in self._local
            if wanted and channel not in self._subscribed:
                self._subscribed.add(channel)
                self._loading[channel] = []
                try:
                    await pubsub.subscribe(self.keys.topic(channel))
                    await self._load_membership(channel)
                except BaseException:
                    self._subscribed.discard(channel)
                    self._loading.pop(channel, None)
                    raise
            elif not wanted and channel in self._subscribed:
                self._subscribed.discard(channel)
                self._members.pop(channel, None)
                self._seq.pop(channel, None)
                self._last_stored.pop(channel, None)
                await pubsub.unsubscribe(self.keys.topic(channel))

    async def _load_membership(self, channel: str) -> None:
        """Replace the mirror of ``channel`` with Redis' set, then apply what arrived meanwhile."""
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.smembers(self.keys.members(channel))
            pipe.get(self.keys.seq(channel))
            raw_members, raw_seq = await pipe.execute()
        self._members[channel] = {_text(m) for m in raw_members}
        self._seq[channel] = int(raw_seq or 0)
        for envelope in self._loading.pop(channel, []):
            self._apply_membership_event(envelope)

    async def _open_link(self) -> None:
        """Open the pub/sub connection, subscribe, and bring presence and mirrors up to date."""
        async with self._link_lock:
            if self._link_client is None:
                raise PublishError("the Redis connection manager is not started")
            pubsub = self._link_client.pubsub()
            try:
                channels = list(self._local)
                await pubsub.subscribe(self._control_topic, *(self.keys.topic(c) for c in channels))
                self._pubsub = pubsub
                self._subscribed = set(channels)
                # Heartbeat first: presence of a worker without one would be reaped.
                await self._beat()
                await self._register_presence()
                for channel in channels:
                    self._loading[channel] = []
                    await self._load_membership(channel)
                    await self._replay_missed(channel)
            except BaseException:
                self._pubsub = None
                self._subscribed.clear()
                self._loading.clear()
                with contextlib.suppress(*REDIS_DOWN):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            self._link_up.set()
        for channel in channels:
            self._schedule_regeneration(channel)

    async def _drop_link(self) -> None:
        self._link_up.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _register_presence(self) -> None:
        """(Re-)register every local connection and record leaves that failed earlier."""
        for connection in list(self._unannounced_leaves.values()):
            await self._run_membership_script(self._leave_script, connection, True)
            self._unannounced_leaves.pop(connection.id, None)
        for channel in list(self._local):
            for connection in self.local_connections(channel):
                await self._run_membership_script(self._join_script, connection, True)

    async def _listen_forever(self) -> None:
        delay = self.settings.reconnect_delay_initial
        while True:
            try:
                if self._pubsub is None:
                    await self._open_link()
                    self.reconnect_count += 1
                    self.metrics.redis_reconnected()
                    logger.warning(
                        "Redis link re-established (reconnect #%d); messages published "
                        "while it was down were not delivered",
                        self.reconnect_count,
                    )
                    await self._run_reconnect_hooks()
                    await self._notify_link_restored()
                delay = self.settings.reconnect_delay_initial
                await self._pump_messages()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                await self._drop_link()
                logger.warning(
                    "Redis link lost (%s: %s); reconnecting in %.2fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_delay_max)

    async def _pump_messages(self) -> None:
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                raise PublishError("the Redis link was dropped")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                self._on_topic_message(message["channel"], message["data"])

    async def _run_reconnect_hooks(self) -> None:
        for hook in list(self.on_reconnect):
            try:
                await hook()
            except Exception:
                logger.exception("on_reconnect hook %r failed", hook)

    def _on_topic_message(self, topic: bytes, data: bytes) -> None:
        topic_name = topic.decode(errors="replace")
        if topic_name == self._control_topic:
            probe = self._probe
            if probe is not None and data == probe[0] and not probe[1].done():
                probe[1].set_result(None)
            return
        try:
            envelope = decode_envelope(data)
        except MalformedMessageError as exc:
            logger.warning("ignored a payload on %s that is not an envelope: %s", topic_name, exc)
            return
        if topic_name != self.keys.topic(envelope.channel):
            logger.warning("ignored an envelope for %r on topic %s", envelope.channel, topic_name)
            return
        if envelope.kind is EventKind.MESSAGE:
            self._deliver(envelope.channel, OutgoingFrame(envelope.payload), envelope.sent_at)
            return
        if envelope.kind is EventKind.STORED:
            self._deliver_stored(envelope.channel, envelope.ref, envelope.payload, envelope.sent_at)
            return
        buffered = self._loading.get(envelope.channel)
        if buffered is not None:
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
        if channel not in self._subscribed or envelope.seq <= self._seq.get(channel, 0):
            return  # not ours any more, or already part of the loaded snapshot
        self._seq[channel] = envelope.seq
        notify = bool(envelope.payload)
        if envelope.kind is EventKind.JOIN:
            self._apply_join(channel, envelope.ref, notify)
        else:
            self._apply_leave(channel, envelope.ref, notify)

    # -- deaf-link detection -----------------------------------------------------------

    async def _probe_link_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval)
            if not self._link_up.is_set():
                continue  # the listener is reconnecting already
            if not await self._link_hears_itself():
                self.deaf_link_count += 1
                self.metrics.deaf_link_detected()
                logger.warning(
                    "pub/sub link of %s is deaf (probe not back within %.1fs); renewing it",
                    self.worker_id,
                    self.settings.probe_timeout,
                )
                await self._restart_listener()

    async def _link_hears_itself(self) -> bool:
        """Publish a token to our own control topic; True if the link delivers it in time."""
        token = uuid.uuid4().hex.encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probe = (token, waiter)
        try:
            try:
                receivers = await self._client().publish(self._control_topic, token)
            except REDIS_DOWN:
                return True  # Redis itself is unreachable: the listener and heartbeat see it
            if receivers == 0:
                return False  # Redis no longer knows our subscription
            try:
                await asyncio.wait_for(waiter, self.settings.probe_timeout)
            except TimeoutError:
                return False
            return True
        finally:
            self._probe = None

    async def _restart_listener(self) -> None:
        listener = self._listener
        if listener is not None and not listener.done():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        await self._drop_link()
        self._listener = self._tasks.spawn(self._listen_forever(), name="pubsub-redis-listener")

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

    async def _beat(self) -> None:
        client = self._client()
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.heartbeat(self.worker_id), "1", px=ttl_ms, get=True)
            pipe.sadd(self.keys.workers, self.worker_id)
            previous, _ = await pipe.execute()
        if previous is None and self._running and self._link_up.is_set():
            # Our heartbeat had expired (event loop stalled, or Redis restarted): peers may
            # have reaped our presence, so register it again.
            logger.warning("heartbeat of %s had expired; re-registering presence", self.worker_id)
            await self._register_presence()

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
        result = await self._reap_script(
            keys=[
                self.keys.workers,
                self.keys.worker_connections(worker_id),
                self.keys.heartbeat(worker_id),
            ],
            args=[
                self.keys.prefix,
                worker_id,
                self.worker_id,
                "1" if force else "0",
                _scripts.SEQ_IDLE_TTL_MS,
            ],
        )
        return int(result)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
