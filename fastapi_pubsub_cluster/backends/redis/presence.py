"""This worker's presence in Redis: its entries, its heartbeat, and reaping dead workers.

Presence converges by design rather than by patching each failure path: every entry is
owned by a worker *instance* (the worker's id and an epoch), and every heartbeat the worker
reconciles its entries against its local truth. A channel whose state in Redis is in doubt
(a command that failed or timed out, a lost link, a lost heartbeat) is reconciled at the
next heartbeat; every channel is reconciled now and then regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ...core.backend import FanOutSink
from ...errors import PresenceError
from ...frames import encode_json
from ...metrics import Metrics
from ...settings import PubSubSettings
from ...tasks import repeat_forever
from . import announced, scripts
from .clients import REDIS_DOWN, PresenceClients, text
from .directory import Directory
from .gate import ChannelGate
from .keys import RedisKeys
from .presence_writes import Change, ChangeQueue, ChangeWriter, reconcile_call
from .upkeep import Reaper, Sweep, round_trips

logger = logging.getLogger("fastapi_pubsub_cluster")


class Presence:
    """Registers this worker's connections, keeps its heartbeat, reaps dead workers.

    Each local connection is a member of its channel's set, owned by this worker's current
    instance; the channels the instance holds sockets in are listed under its own key. A
    heartbeat key with a TTL tells live instances apart from dead ones, whose entries a
    live worker claims (atomically, so only one does) and removes, announcing each leave.
    A worker that finds its own instance claimed (it stalled past its TTL) moves to a new
    epoch, so that a reaper still busy with the old instance cannot remove what the new
    one registers.
    """

    def __init__(
        self,
        clients: PresenceClients,
        keys: RedisKeys,
        settings: PubSubSettings,
        *,
        worker_id: str,
        publish_command: str,
        metrics: Metrics,
        local: FanOutSink,
    ) -> None:
        client = clients.commands
        self._client = client
        self._beat_client = clients.heartbeat
        self._keys = keys
        self._settings = settings
        self._worker_id = worker_id
        self._publish_command = publish_command
        self._metrics = metrics
        self._local = local
        self._reconcile = client.register_script(scripts.RECONCILE)
        self._epoch = 1
        self._beating = False
        self._recorded_channels: set[str] = set()
        # Channels whose entries in Redis are in doubt, reconciled at the next heartbeat.
        self._in_doubt: set[str] = set()
        # Channels this worker left (no socket here any more): reconciled once more, so
        # that an entry a failed leave left behind goes, then dropped from its record.
        self._vacated: set[str] = set()
        # Earlier instances of this worker, reaped once nothing is in doubt.
        self._retired: list[str] = []
        self._sweep = Sweep(self._swept_channels, self._connections_here)
        #: Keeps reconciliations from racing this worker's own joins and leaves.
        self.gate = ChannelGate()
        #: Which worker holds which connection, and whose it is (targeted sends).
        self.directory = Directory(
            client,
            keys,
            worker_id=worker_id,
            instance=lambda: self.instance,
            publish_command=publish_command,
            local=local,
            gate=self.gate,
            inline=publish_command == "PUBLISH",
        )
        #: Removes what dead worker instances registered.
        self.reaper = Reaper(
            client, keys, publish_command=publish_command, directory=self.directory
        )
        writer = ChangeWriter(
            clients.writes,
            keys,
            worker_id=worker_id,
            instance=lambda: self.instance,
            publish_command=publish_command,
            directory=self.directory,
            gate=self.gate,
            recorded=self._recorded_channels.update,
        )
        #: Joins and leaves on their way to Redis, in batches (the admission queue).
        self.changes = ChangeQueue(
            writer.write,
            answers=clients.answers,
            capacity=settings.admission_queue_size,
            target=clients.target,
            metrics=metrics,
            doubt=self._doubt_changes,
        )

    @property
    def instance(self) -> str:
        """Who owns this worker's entries now: its id and its epoch."""
        return f"{self._worker_id}#{self._epoch}"

    def doubt(self, channels: Iterable[str]) -> None:
        """Reconcile ``channels`` at the next heartbeat."""
        self._in_doubt.update(channels)

    def _doubt_changes(self, changes: list[Change]) -> None:
        self._in_doubt.update(change.channel for change in changes)
        if any(change.directory for change in changes):
            self.directory.doubt()

    # -- entries -----------------------------------------------------------------------

    async def register(
        self,
        channel: str,
        connection_id: str,
        *,
        notify: bool,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        directory: bool = True,
    ) -> None:
        """Add a connection to its channel, with its metadata (and with ``directory``, its
        directory entries), announced once, in the next batch. Raises PresenceError if
        Redis does not answer; the channel is then reconciled at the next heartbeat (the
        join may have run)."""
        meta = encode_json(dict(metadata)) if metadata is not None else ""
        self._vacated.discard(channel)
        await self.changes.submit(
            Change("j", channel, connection_id, notify, meta, user_id, directory)
        )

    async def unregister(
        self,
        channel: str,
        connection_id: str,
        *,
        notify: bool,
        user_id: str | None = None,
        directory: bool = True,
    ) -> None:
        """Remove a connection (with ``directory``, its directory entries too) and announce
        it, in the next batch; if Redis does not answer, the next heartbeat reconciles the
        channel."""
        try:
            await self.changes.submit(
                Change("l", channel, connection_id, notify, "", user_id, directory)
            )
        except PresenceError as exc:
            logger.warning("leave of %s not recorded yet (%s); retrying", connection_id, exc)

    async def record_channel(self, channel: str) -> None:
        """Note, under this instance's own key, that it holds sockets in ``channel``, so
        that a peer can find them if this worker dies."""
        await self._client.sadd(self._keys.worker_channels(self.instance), channel)
        self._recorded_channels.add(channel)

    def vacate(self, channel: str) -> None:
        """This worker holds no socket in ``channel`` any more: reconciled at the next
        heartbeat (what a failed leave left behind goes), then dropped from its record."""
        self._vacated.add(channel)

    async def _drop_vacated(self) -> None:
        # Reconciled with no socket here (what a failed leave left goes), then unrecorded;
        # if Redis does not answer, the sweep (over recorded channels too) gets to them.
        vacated, self._vacated = list(self._vacated), set()
        for batch in round_trips(vacated, self._connections_here):
            await self.reconcile(batch)
            async with self.gate.reconciliation(*batch):
                empty = [c for c in batch if not self._local.local_members(c)]
                if empty:
                    await self._client.srem(self._keys.worker_channels(self.instance), *empty)
                    self._recorded_channels.difference_update(empty)

    # -- reconciliation ----------------------------------------------------------------

    async def reconcile(self, channels: Sequence[str]) -> int:
        """Make this worker's entries in ``channels`` match its live connections there; how
        many entries changed (each announced). Several channels (one of
        :func:`round_trips`' groups) take one round trip on a single Redis, and go one by one
        on a cluster (a pipeline of scripts there would span slots)."""
        async with self.gate.reconciliation(*channels):
            unrecorded = [
                channel
                for channel in channels
                if channel not in self._recorded_channels and self._local.local_members(channel)
            ]
            calls = [
                reconcile_call(
                    self._keys, channel, self._local, self.instance, self._publish_command
                )
                for channel in channels
            ]
            if len(calls) == 1 or isinstance(self._client, RedisCluster):
                for channel in unrecorded:
                    await self.record_channel(channel)
                changes = [await self._reconcile(keys=keys, args=args) for keys, args in calls]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    if unrecorded:
                        pipe.sadd(self._keys.worker_channels(self.instance), *unrecorded)
                    for keys, args in calls:
                        await self._reconcile(keys=keys, args=args, client=pipe)
                    replies = await pipe.execute()
                self._recorded_channels.update(unrecorded)
                changes = replies[1:] if unrecorded else replies
        for channel, changed in zip(channels, changes, strict=True):
            if changed:
                logger.info(
                    "reconciled %d presence entries of %s in %r", changed, self.instance, channel
                )
        return sum(int(changed) for changed in changes)

    async def reconcile_in_doubt(self) -> None:
        """Reconcile every channel in doubt; those Redis does not answer for stay in doubt."""
        await self.settle(list(self._in_doubt))

    async def settle(self, channels: Iterable[str]) -> None:
        """Reconcile ``channels`` now, a heartbeat's share per round trip; raises if Redis
        does not answer, leaving those not reconciled yet in doubt."""
        pending = list(channels)
        self._in_doubt.update(pending)
        for batch in round_trips(pending, self._connections_here):
            epoch = self._epoch
            await self.reconcile(batch)
            if epoch == self._epoch:  # else registered for an instance claimed meanwhile
                self._in_doubt.difference_update(batch)

    def _connections_here(self, channel: str) -> int:
        return len(self._local.local_members(channel))

    def _swept_channels(self) -> list[str]:
        # Every channel where this instance may own an entry: those it holds sockets in,
        # and those it recorded, sockets or not (a leave that failed left one behind).
        return list({*self._local.local_channels(), *self._recorded_channels, *self._vacated})

    async def _sweep_some(self) -> None:
        """Reconcile this heartbeat's share of the sweep over every channel this instance
        may own an entry in (its record in Redis read at each sweep's start)."""
        if self._sweep.starts_next:
            record = await self._client.smembers(self._keys.worker_channels(self.instance))
            self._recorded_channels.update(text(channel) for channel in record)
        share = self._sweep.share()
        if share:
            await self.reconcile(share)
            self._sweep.done(share)
            self._vacated.update(c for c in share if not self._local.local_members(c))

    # -- heartbeat and reaping ---------------------------------------------------------

    async def beat(self) -> None:
        """Renew the heartbeat. If this instance was claimed meanwhile (it stalled past its
        TTL, or Redis lost its keys), move to a new epoch and doubt every channel."""
        if await self._renew() and self._beating:
            retired = self.instance
            self._epoch += 1
            self._retired.append(retired)
            self._recorded_channels.clear()
            self._in_doubt.update(self._local.local_channels())
            self.directory.doubt()
            logger.warning(
                "presence of %s was lost (stalled past its TTL, or Redis lost it); "
                "registering it again as %s",
                retired,
                self.instance,
            )
            await self._renew()
        self._beating = True

    async def _renew(self) -> bool:
        """Write the heartbeat (and the settings announcement, if Redis lost it); True if
        it had expired or the channel record was claimed."""
        ttl_ms = int(self._settings.heartbeat_ttl * 1000)
        instance = self.instance
        async with self._beat_client.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.heartbeat(instance), "1", px=ttl_ms, get=True)
            pipe.sadd(self._keys.workers, instance)
            pipe.exists(self._keys.worker_channels(instance))
            announced.restore(pipe, self._keys, self._settings)
            previous, _, recorded, *restored = await pipe.execute()
        if any(restored):
            logger.warning("Redis had lost the workers' settings; announced them again")
        return previous is None or bool(self._recorded_channels and not recorded)

    async def keep(self) -> None:
        """One heartbeat's upkeep: settle what is in doubt, sweep, reap."""
        await self.reconcile_in_doubt()
        await self._drop_vacated()
        await self._sweep_some()
        await self.directory.keep()
        while self._retired and not self._in_doubt:
            # What an earlier instance still owns is not live (or was given to this one).
            await self.reap(self._retired[0], force=True)
            self._retired.pop(0)
        await self.reaper.reap_dead(self.instance, spare=self._retired)

    async def beat_forever(self) -> None:
        """:meth:`beat` every third of the TTL, on a connection of its own, so that no
        join, reconciliation or publish ever delays it. Supervised: a failure is logged
        (and counted unless it is Redis not answering), and the loop goes on."""
        await self._forever(self.beat, "heartbeat")

    async def keep_forever(self) -> None:
        """:meth:`keep` every third of the TTL. Supervised as :meth:`beat_forever`."""
        await self._forever(self.keep, "presence")

    async def _forever(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        interval = self._settings.heartbeat_ttl / 3
        await repeat_forever(work, interval, name, self._metrics.loop_restarted, REDIS_DOWN)

    async def leave_cluster(self) -> None:
        """Remove everything this worker registered, under every instance it had."""
        for instance in [*self._retired, self.instance]:
            await self.reap(instance, force=True)
        self._retired.clear()

    async def reap(self, instance: str, *, force: bool = False) -> int:
        """Remove what a worker instance registered; -1 if it turned out alive (``force``
        removes it all the same: a worker's own shutdown). See :class:`Reaper`."""
        return await self.reaper.reap(instance, by=self.instance, force=force)
