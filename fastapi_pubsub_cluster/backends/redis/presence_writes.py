"""Presence registration: joins and leaves written to Redis together.

Every change that arrives in one turn of the event loop, or while the previous batch is on
its way, goes to Redis in one round trip: per channel one script that records them all and
announces them as one membership batch, with the directory entries and the worker's
channel record beside it. A storm of thousands of sockets then costs a few round trips, not
thousands, and never queues for the connection pool. Joins wait for room in a bounded
admission queue (:class:`ChangeQueue`) rather than being refused; only a Redis that does
not answer a fresh connection fails them. :class:`ChangeWriter` writes one batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ...core.backend import FanOutSink
from ...errors import PresenceError, describe
from ...frames import encode_json
from ...metrics import Metrics
from . import scripts
from .clients import REDIS_DOWN, CommandClient
from .directory import Directory
from .gate import ChannelGate
from .keys import RedisKeys

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Changes written in one round trip at most (the scripts run back to back on Redis).
MAX_CHANGES_PER_ROUND_TRIP = 2_000
#: Times a batch is written while Redis keeps answering a fresh connection (the failure was
#: this worker's own: its loop stalled past the command timeout, its connection dropped).
ATTEMPTS = 3


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class Change:
    """One join (``"j"``) or leave (``"l"``) of one connection in one channel."""

    kind: Literal["j", "l"]
    channel: str
    connection_id: str
    notify: bool
    #: Presence metadata as JSON text ("" for none).
    meta: str = ""
    user_id: str | None = None
    #: True in the connection's own channel: its directory entries change with it.
    directory: bool = False
    done: asyncio.Future[None] = field(default_factory=_future)


#: Writes one batch in one round trip; returns the channels whose changes Redis refused
#: (with why), raises if the round trip itself failed.
WriteBatch = Callable[[list[Change]], Awaitable[dict[str, Exception]]]


class ChangeQueue:
    """The admission queue: changes wait here, and go to Redis in batches, one at a time,
    in the order they came (a connection's leave never overtakes its join)."""

    def __init__(
        self,
        write: WriteBatch,
        *,
        answers: Callable[[], Awaitable[bool]],
        capacity: int,
        target: str,
        metrics: Metrics,
        doubt: Callable[[list[Change]], None],
    ) -> None:
        self._write = write
        self._answers = answers
        self._capacity = capacity
        self._target = target
        self._metrics = metrics
        self._doubt = doubt
        self._pending: deque[Change] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._joins = 0  # joins queued or being written
        self._full = False

    @property
    def waiting(self) -> int:
        """Changes queued and not written yet."""
        return len(self._pending)

    async def submit(self, change: Change) -> None:
        """Queue ``change`` and wait until Redis has it. A join first waits for room in the
        queue. Raises :class:`PresenceError` if Redis refused it or does not answer."""
        if change.kind == "j":
            while self._joins >= self._capacity:
                if not self._full:
                    self._full = True
                    logger.warning(
                        "admission queue full (%d joins waiting for Redis); new joins wait "
                        "for room (PUBSUB_ADMISSION_QUEUE_SIZE)",
                        self._joins,
                    )
                self._metrics.admission_waited()
                self._room.clear()
                await self._room.wait()
            self._joins += 1
        self._pending.append(change)
        self._wake.set()
        await change.done

    async def run_forever(self) -> None:
        """Write what is queued, batch after batch. Supervised: a failure fails its batch
        (logged and counted), never the loop."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # the rest of this loop turn's arrivals join the batch
            while self._pending:
                count = min(len(self._pending), MAX_CHANGES_PER_ROUND_TRIP)
                batch = [self._pending.popleft() for _ in range(count)]
                try:
                    await self._write_batch(batch)
                except Exception as exc:
                    logger.exception("writing %d presence changes failed", len(batch))
                    self._metrics.loop_restarted("presence-writes")
                    self._settle(batch, {c.channel: exc for c in batch})

    async def _write_batch(self, batch: list[Change]) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                refused = await self._write(batch)
            except REDIS_DOWN as exc:
                self._doubt(batch)  # it may have run: reconciled at the next heartbeat
                if attempt < ATTEMPTS and await self._answers():
                    logger.info(
                        "writing %d presence changes failed (%s), but Redis answers: again",
                        len(batch),
                        describe(exc),
                    )
                    continue
                error = PresenceError(f"Redis at {self._target} does not answer: {describe(exc)}")
                # One line per batch, not per socket: an outage during a storm is thousands.
                logger.warning(
                    "%d joins and leaves not written (%s); their channels are reconciled "
                    "once Redis answers",
                    len(batch),
                    error,
                )
                self._settle(batch, {c.channel: error for c in batch})
                return
            if refused:
                self._doubt([c for c in batch if c.channel in refused])
            self._settle(batch, refused)
            return

    def _settle(self, batch: list[Change], failed: dict[str, Exception]) -> None:
        for change in batch:
            if change.kind == "j":
                self._joins -= 1
            done = change.done
            if done.done():
                continue  # its caller was cancelled: the change was written all the same
            error = failed.get(change.channel)
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(
                    error
                    if isinstance(error, PresenceError)
                    else PresenceError(f"Redis at {self._target} refused: {describe(error)}")
                )
        if self._joins < self._capacity:
            if self._full:
                self._full = False
                logger.info("admission queue has room again")
            self._room.set()


class ChangeWriter:
    """Writes a batch of changes: per channel one CHANGES script (membership, metadata,
    owners, and on a single Redis the directory entries, announced as one membership
    batch), the worker's channel record for the channels joined, and on a cluster the
    directory entries beside them. Holds the channels and the directory in the gate, so
    that no reconciliation reads the local truth while the batch changes Redis."""

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        *,
        worker_id: str,
        instance: Callable[[], str],
        publish_command: str,
        directory: Directory,
        gate: ChannelGate,
        recorded: Callable[[list[str]], None],
    ) -> None:
        self._client = client
        self._keys = keys
        self._worker_id = worker_id
        self._instance = instance
        self._publish_command = publish_command
        self._directory = directory
        self._gate = gate
        self._recorded = recorded
        self._script = client.register_script(scripts.CHANGES)

    async def write(self, batch: list[Change]) -> dict[str, Exception]:
        """Write ``batch``; the channels whose script Redis refused, with its error. Raises
        when the round trip failed (any of it may have run)."""
        by_channel: dict[str, list[Change]] = {}
        for change in batch:
            by_channel.setdefault(change.channel, []).append(change)
        joined = [ch for ch, changes in by_channel.items() if any(c.kind == "j" for c in changes)]
        client = self._client
        async with self._gate.changes([*by_channel, Directory.GATE_NAME]):
            instance = self._instance()
            calls = [self._call(ch, changes, instance) for ch, changes in by_channel.items()]
            if isinstance(client, RedisCluster):
                replies = await self._write_on_cluster(client, calls, batch, joined, instance)
            else:
                async with client.pipeline(transaction=False) as pipe:
                    if joined:
                        pipe.sadd(self._keys.worker_channels(instance), *joined)
                    for keys, args in calls:
                        await self._script(keys=keys, args=args, client=pipe)
                    replies = (await pipe.execute(raise_on_error=False))[1 if joined else 0 :]
        refused = {
            channel: reply
            for channel, reply in zip(by_channel, replies, strict=True)
            if isinstance(reply, Exception)
        }
        self._recorded([channel for channel in joined if channel not in refused])
        return refused

    async def _write_on_cluster(
        self,
        client: RedisCluster,
        calls: list[tuple[list[str], list[Any]]],
        batch: list[Change],
        joined: list[str],
        instance: str,
    ) -> list[Any]:
        # A channel's keys share one slot, a batch's channels do not: one script per
        # channel (each on its shard), then the records and the directory, split by slot.
        replies: list[Any] = []
        for keys, args in calls:
            try:
                replies.append(await self._script(keys=keys, args=args))
            except ResponseError as exc:
                replies.append(exc)
        async with client.pipeline(transaction=False) as pipe:
            if joined:
                pipe.sadd(self._keys.worker_channels(instance), *joined)
            for change in batch:
                if change.directory:
                    self._directory.stage(pipe, change.kind, change.connection_id, change.user_id)
            await pipe.execute()
        return replies

    def _call(
        self, channel: str, changes: list[Change], instance: str
    ) -> tuple[list[str], list[Any]]:
        keys = self._keys
        script_keys = keys.presence(channel)
        inline = self._directory.inline
        if inline:
            script_keys.append(keys.worker_connections(self._worker_id))
        args: list[Any] = [
            self._publish_command,
            keys.topic(channel),
            channel,
            instance,
            scripts.SEQ_IDLE_TTL_MS,
        ]
        user_keys: dict[str, int] = {}
        for change in changes:
            entry, user = "", 0
            if change.directory and inline:
                entry = self._directory.entry(change.user_id) if change.kind == "j" else "-"
                if change.user_id is not None:
                    key = keys.user_connections(change.user_id)
                    if key not in user_keys:
                        script_keys.append(key)
                        user_keys[key] = len(script_keys)  # Lua's KEYS count from 1
                    user = user_keys[key]
            args += [
                change.kind,
                change.connection_id,
                "1" if change.notify else "0",
                change.meta,
                entry,
                user,
            ]
        return script_keys, args


def reconcile_call(
    keys: RedisKeys, channel: str, local: FanOutSink, instance: str, publish_command: str
) -> tuple[list[str], list[Any]]:
    """The RECONCILE script's keys and arguments for ``channel``, from the local truth:
    every live connection of this worker there (with its metadata), owned by ``instance``."""
    metadata = local.local_metadata(channel)
    live_with_meta: list[str] = []
    for connection_id in local.local_members(channel):
        meta = metadata.get(connection_id)
        live_with_meta += [connection_id, encode_json(meta) if meta is not None else ""]
    worker_prefix = instance.rpartition("#")[0] + "#"
    args = [
        publish_command,
        keys.topic(channel),
        channel,
        instance,
        worker_prefix,
        scripts.SEQ_IDLE_TTL_MS,
        *live_with_meta,
    ]
    return keys.presence(channel), args
