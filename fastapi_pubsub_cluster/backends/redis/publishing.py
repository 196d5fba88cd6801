"""The one path by which a publication reaches Redis, for workers and outside publishers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from ...envelope import (
    Envelope,
    EventKind,
    encode_envelope,
    encode_payload,
    envelope_overhead,
    excluding_payload,
)
from ...errors import ConfigurationError, PublishError, describe
from ...settings import PubSubSettings
from . import scripts
from .clients import REDIS_DOWN, CommandClient, RedisEndpoint
from .keys import RedisKeys
from .scripts import packed_timestamp, stored_envelope_head


@dataclass(frozen=True, slots=True)
class Publication:
    """A PUBLISH of ``data`` on ``topic``, or, for a channel with history (``script_keys``
    set), the store script with ``script_args``: append to the stream and announce.

    Either carries a publication id, so that a retry (a command that timed out may have
    run) is neither stored nor delivered twice.
    """

    channel: str
    topic: str
    data: bytes
    script_keys: tuple[str, ...] = ()
    script_args: tuple[str | bytes | int, ...] = ()


class PublishPath:
    """Validates, encodes once, and sends: PUBLISH, SPUBLISH on a cluster, or the store
    script for a channel with history, within twice ``redis_timeout``."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        client: CommandClient,
        settings: PubSubSettings,
        *,
        origin: str,
    ) -> None:
        self._endpoint = endpoint
        self._client = client
        self._settings = self._checked(settings)
        self._keys = RedisKeys(settings.key_prefix)
        self._origin = origin
        self._store = client.register_script(scripts.STORE)
        # Plain PUBLISHes waiting for the flusher, and the flusher (while there are any).
        self._queued: list[tuple[Publication, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # A lone caller's PUBLISH in flight, sent from its own task (no pipeline, no task),
        # over the path's own connection where commands go to one address.
        self._alone = False
        self._connection: PublishConnection | None = None
        if isinstance(client, Redis) and endpoint.is_one_address:
            self._connection = PublishConnection(client)

    def adopt(self, settings: PubSubSettings) -> None:
        """Decide history, sizes and time limits by ``settings`` from now on."""
        self._settings = self._checked(settings)

    def _checked(self, settings: PubSubSettings) -> PubSubSettings:
        if settings.history_min_replicas and not isinstance(self._client, Redis):
            # WAIT counts the replicas of the one node a connection reaches; a cluster's
            # history streams live on many.
            raise ConfigurationError(
                "PUBSUB_HISTORY_MIN_REPLICAS is not supported on a Redis Cluster; set it to 0"
            )
        return settings

    def prepare(self, channel: str, payload: Any, exclude: str | None = None) -> Publication:
        """Validate and encode; raises InvalidChannelError, MalformedMessageError or
        MessageTooLargeError."""
        settings = self._settings
        settings.validate_channel_id(channel)
        topic = self._keys.topic(channel)
        publication_id = uuid.uuid4().hex
        if not settings.has_history(channel):
            envelope = Envelope(
                EventKind.MESSAGE,
                channel,
                self._origin,
                publication_id,
                0,
                payload,
                time.time(),
                exclude,
            )
            data = encode_envelope(envelope)
            # The limit applies to the payload, not to the envelope around it.
            settings.check_message_size(len(data) - envelope_overhead(envelope))
            return Publication(channel, topic, data)
        data = encode_payload(payload)
        settings.check_message_size(len(data))
        args: tuple[str | bytes | int, ...] = (
            self._endpoint.publish_command,
            topic,
            stored_envelope_head(channel, self._origin, excluding=exclude is not None),
            data,
            settings.history_size,
            int(settings.history_ttl * 1000),
            packed_timestamp(time.time()),
            publication_id,
            scripts.STORED_IDS_WINDOW_MS,
        )
        if exclude is not None:
            args += (excluding_payload(exclude, data),)
        keys = (self._keys.history(channel), self._keys.stored_ids(channel))
        return Publication(channel, topic, data, keys, args)

    async def send(self, publication: Publication) -> int:
        """Hand ``publication`` to Redis; how many workers heard it. Raises
        :class:`~fastapi_pubsub_cluster.errors.PublishError` within the time limit.

        Plain PUBLISHes on one Redis are batched: concurrent callers queue theirs, and one
        flusher sends everything queued as one pipeline (one round trip, one connection),
        so that many callers never wait for, or fail for lack of, pooled connections.
        """
        try:
            batching = not publication.script_keys and isinstance(self._client, Redis)
            if batching and (self._alone or self._queued or self._flusher is not None):
                return await self._batched(publication)  # with a deadline of its own
            async with asyncio.timeout(self._settings.redis_timeout * 2):
                if not publication.script_keys:
                    if batching:
                        return await self._lone(publication)
                    return await self._endpoint.publish_raw(
                        self._client, publication.topic, publication.data
                    )
                if self._settings.history_min_replicas:
                    return await self._store_replicated(publication)
                _, receivers = await self._store(
                    keys=publication.script_keys, args=publication.script_args
                )
                return int(receivers)
        except REDIS_DOWN as exc:
            raise PublishError(
                f"cannot publish to {publication.channel!r}, Redis unavailable: {describe(exc)}"
            ) from exc

    async def _store_replicated(self, publication: Publication) -> int:
        """The store script, then ``WAIT`` on the same connection: acknowledged only once
        ``history_min_replicas`` replicas have it (so a promoted replica does)."""
        assert isinstance(self._client, Redis)  # refused on a cluster at startup
        settings = self._settings
        wanted = settings.history_min_replicas
        pipe = self._client.pipeline(transaction=False)
        await self._store(keys=publication.script_keys, args=publication.script_args, client=pipe)
        # Half the command time limit: the connection's read must not time out first.
        wait_s = settings.redis_timeout / 2
        pipe.execute_command("WAIT", wanted, max(1, int(wait_s * 1000)))
        (_, receivers), confirmed = await pipe.execute()
        if int(confirmed) < wanted:
            raise PublishError(
                f"{publication.channel!r}: stored, but {confirmed} of {wanted} replica(s) "
                f"confirmed it within {wait_s:g}s (history_min_replicas); a failover may "
                "lose it"
            )
        return int(receivers)

    async def aclose(self) -> None:
        """Stop the flusher (its waiting callers get an error) and wait for it; close the
        lone callers' connection."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if self._connection is not None:
            await self._connection.aclose()

    async def _lone(self, publication: Publication) -> int:
        """PUBLISH from the caller's task when nothing else is being published: a lone
        caller (one publishing in sequence) pays one plain round trip, on the path's own
        connection where there is one (else a pooled one), not a pipeline, a future and a
        task. Callers that come meanwhile queue for the flusher."""
        self._alone = True
        try:
            if self._connection is not None:
                receivers = await self._connection.publish(publication.topic, publication.data)
            else:
                assert isinstance(self._client, Redis)
                receivers = int(await self._client.publish(publication.topic, publication.data))
        finally:
            self._alone = False
            if self._queued:
                self._start_flusher()
        return receivers

    def _batched(self, publication: Publication) -> asyncio.Future[int]:
        """Queue ``publication`` for the flusher; its future resolves with the receivers,
        or fails with TimeoutError after the time limit (a timer, cheaper per caller than
        a timeout context)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        deadline = loop.call_later(self._settings.redis_timeout * 2, _expire, future)
        future.add_done_callback(lambda _: deadline.cancel())
        self._queued.append((publication, future))
        if not self._alone:  # else the lone caller starts it when its reply is in
            self._start_flusher()
        return future

    def _start_flusher(self) -> None:
        # One round trip at a time: a second connection would be opened for nothing (and
        # left half open if Redis stalls during its handshake).
        if self._flusher is None or self._flusher.done():
            loop = asyncio.get_running_loop()
            self._flusher = loop.create_task(self._flush(), name="pubsub-publish-flusher")

    async def _flush(self) -> None:
        """Send what is queued, one pipeline at a time, until nothing is."""
        try:
            await self._flush_queued()
        finally:
            if asyncio.current_task() is self._flusher:
                self._flusher = None  # lone callers may go straight to Redis again

    async def _flush_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            # A caller that gave up (time limit, cancelled) before its turn is not sent.
            batch = [(p, f) for p, f in batch if not f.done()]
            if not batch:
                continue
            try:
                async with asyncio.timeout(self._settings.redis_timeout * 2):
                    replies = await self._pipeline(p for p, _ in batch)
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(_copy_error(exc))
                if not isinstance(exc, Exception):
                    raise  # cancelled (shutdown): the callers were told
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(int(reply))

    async def _pipeline(self, publications: Iterable[Publication]) -> list[Any]:
        """PUBLISH each of ``publications`` in one pipeline (no transaction); each reply
        or error in order."""
        assert isinstance(self._client, Redis)
        pipe = self._client.pipeline(transaction=False)
        for publication in publications:
            pipe.publish(publication.topic, publication.data)
        return await pipe.execute(raise_on_error=False)

    async def publish(self, channel: str, payload: Any, exclude: str | None = None) -> int:
        """:meth:`prepare` and :meth:`send`."""
        return await self.send(self.prepare(channel, payload, exclude))


def _expire(future: asyncio.Future[int]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("publish timed out waiting for Redis"))


def _copy_error(exc: BaseException) -> BaseException:
    """What each waiting caller gets when the whole pipeline failed: an error of its own
    (a shared exception object would collect every caller's traceback)."""
    if isinstance(exc, asyncio.CancelledError):
        return asyncio.CancelledError()
    if isinstance(exc, TimeoutError):
        return TimeoutError("the publish pipeline timed out")
    if isinstance(exc, REDIS_DOWN):
        error = RedisConnectionError(f"the publish pipeline failed: {describe(exc)}")
        error.__cause__ = exc
        return error
    return exc


class PublishConnection:
    """One persistent redis-py connection, built as ``client``'s pool builds its own (same
    address, TLS, credentials, client name, connect timeout and retry policy) but not
    part of the pool.

    A lone caller publishing in sequence sends each PUBLISH here, and so pays neither a
    pool checkout (with its liveness check) and release nor the client's per-command
    bookkeeping. The connection opens on first use and, when Redis dropped it (killed,
    restarted), reconnects through redis-py's retry: a retried PUBLISH is harmless, as
    receivers drop a publication id they have seen.

    It has no socket timeout: callers bound each :meth:`publish` with their own time
    limit (a cancelled command closes the connection, and the next one reopens it).
    That spares redis-py's task per write and timer per read, a third of the cost of a
    publish. Only one caller at a time may use it.
    """

    __slots__ = ("_closed", "_connection", "_pool")

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool
        self._connection: AbstractConnection | None = None
        self._closed = False

    async def publish(self, topic: str, data: bytes) -> int:
        """PUBLISH ``data`` on ``topic``; how many subscribers got it. Raises redis-py's
        errors once its retries are spent, or PublishError after :meth:`aclose`."""
        connection = self._connection
        if connection is None:
            if self._closed:
                raise PublishError("the publish path is closed")
            pool = self._pool
            options = {**pool.connection_kwargs, "socket_timeout": None}
            connection = self._connection = pool.connection_class(**options)
        command = connection.pack_command("PUBLISH", topic, data)

        async def attempt() -> int:
            if self._closed:  # closed during a retry: do not open it again
                raise PublishError("the publish path is closed")
            # Connects first if it is not connected (a new or a dropped connection).
            await connection.send_packed_command(command)
            return int(await connection.read_response())

        async def dropped(_: Exception) -> None:
            await connection.disconnect()  # the next attempt opens it again

        return await connection.retry.call_with_retry(attempt, dropped)

    async def aclose(self) -> None:
        """Close the connection; publishing here fails from now on."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()
