"""Presence upkeep: the heartbeat, reconciliation, the sweep over every channel, and
reaping, each heartbeat.

Every heartbeat the worker reconciles the channels in doubt, and a share of the sweep: it
reconciles every channel of the worker in turn, whether or not anything marked it in
doubt, so that presence lost behind the worker's back (keys flushed, a failover to a stale
replica) comes back by itself. Then it reaps the instances that died (:mod:`.reaping`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence

from redis.asyncio.cluster import RedisCluster

from ...core.backend import FanOutSink
from ...metrics import Metrics
from ...settings import PubSubSettings
from ...tasks import repeat_forever
from . import announced, scripts
from .clients import REDIS_DOWN, PresenceClients, text
from .keys import RedisKeys
from .presence import Presence
from .presence_writes import reconcile_call
from .reaping import Reaper

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Channels reconciled per heartbeat by the sweep, and per round trip (one pipeline)
#: whenever many are reconciled at once.
CHANNELS_PER_BEAT = 64
#: Heartbeats between the starts of two sweeps.
BEATS_PER_SWEEP = 10
#: Connections reconciled per round trip at most: the scripts of one pipeline run back to
#: back on Redis, and must answer within one command timeout. A bigger channel goes alone.
CONNECTIONS_PER_ROUND_TRIP = 5_000


def round_trips(channels: Sequence[str], connections: Callable[[str], int]) -> Iterator[list[str]]:
    """``channels`` in groups of one round trip each: at most :data:`CHANNELS_PER_BEAT`
    channels and :data:`CONNECTIONS_PER_ROUND_TRIP` local connections (``connections``
    counts a channel's)."""
    group: list[str] = []
    weight = 0
    for channel in channels:
        size = connections(channel)
        if group and (
            len(group) == CHANNELS_PER_BEAT or weight + size > CONNECTIONS_PER_ROUND_TRIP
        ):
            yield group
            group, weight = [], 0
        group.append(channel)
        weight += size
    if group:
        yield group


class Sweep:
    """Which channels to reconcile at each heartbeat: a share of the current sweep, and a
    new sweep over every local channel every :data:`BEATS_PER_SWEEP` heartbeats."""

    def __init__(
        self,
        local_channels: Callable[[], Collection[str]],
        connections: Callable[[str], int],
    ) -> None:
        self._local_channels = local_channels
        self._connections = connections
        self._pending: deque[str] = deque()
        self._beats_since_start = BEATS_PER_SWEEP  # the first heartbeat starts one

    @property
    def starts_next(self) -> bool:
        """True if the next :meth:`share` starts a new sweep."""
        return not self._pending and self._beats_since_start + 1 >= BEATS_PER_SWEEP

    def share(self) -> list[str]:
        """This heartbeat's channels (none between sweeps); :meth:`done` once reconciled,
        else they come again at the next heartbeat."""
        if not self._pending:
            self._beats_since_start += 1
            if self._beats_since_start < BEATS_PER_SWEEP:
                return []
            self._beats_since_start = 0
            self._pending.extend(self._local_channels())
        head = [self._pending[i] for i in range(min(CHANNELS_PER_BEAT, len(self._pending)))]
        return next(round_trips(head, self._connections), [])

    def done(self, share: list[str]) -> None:
        """``share`` (from :meth:`share`) was reconciled."""
        for _ in share:
            self._pending.popleft()


class PresenceUpkeep:
    """Keeps this worker's presence true: its heartbeat, reconciliation, the sweep, and
    reaping dead instances (its own earlier ones too).

    A heartbeat key with a TTL tells live instances apart from dead ones, whose entries a
    live worker claims (atomically, so only one does) and removes, announcing each leave.
    """

    def __init__(
        self,
        presence: Presence,
        clients: PresenceClients,
        keys: RedisKeys,
        settings: PubSubSettings,
        *,
        publish_command: str,
        metrics: Metrics,
        local: FanOutSink,
    ) -> None:
        client = clients.commands
        self._presence = presence
        self._client = client
        self._beat_client = clients.heartbeat
        self._keys = keys
        self._settings = settings
        self._publish_command = publish_command
        self._metrics = metrics
        self._local = local
        self._reconcile = client.register_script(scripts.RECONCILE)
        self._beating = False
        # Earlier instances of this worker, reaped once nothing is in doubt.
        self._retired: list[str] = []
        self._sweep = Sweep(self._swept_channels, self._connections_here)
        #: Removes what dead worker instances registered.
        self.reaper = Reaper(
            client, keys, publish_command=publish_command, directory=presence.directory
        )

    # -- reconciliation ----------------------------------------------------------------

    async def reconcile(self, channels: Sequence[str]) -> int:
        """Make this worker's entries in ``channels`` match its live connections there; how
        many entries changed (each announced). Several channels (one of
        :func:`round_trips`' groups) take one round trip on a single Redis, and go one by one
        on a cluster (a pipeline of scripts there would span slots)."""
        presence = self._presence
        async with presence.gate.reconciliation(*channels):
            unrecorded = [
                channel
                for channel in channels
                if channel not in presence.recorded_channels and self._local.local_members(channel)
            ]
            calls = [
                reconcile_call(
                    self._keys, channel, self._local, presence.instance, self._publish_command
                )
                for channel in channels
            ]
            if len(calls) == 1 or isinstance(self._client, RedisCluster):
                for channel in unrecorded:
                    await presence.record_channel(channel)
                changes = [await self._reconcile(keys=keys, args=args) for keys, args in calls]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    if unrecorded:
                        pipe.sadd(self._keys.worker_channels(presence.instance), *unrecorded)
                    for keys, args in calls:
                        await self._reconcile(keys=keys, args=args, client=pipe)
                    replies = await pipe.execute()
                presence.recorded_channels.update(unrecorded)
                changes = replies[1:] if unrecorded else replies
        for channel, changed in zip(channels, changes, strict=True):
            if changed:
                logger.info(
                    "reconciled %d presence entries of %s in %r",
                    changed,
                    presence.instance,
                    channel,
                )
        return sum(int(changed) for changed in changes)

    async def reconcile_in_doubt(self) -> None:
        """Reconcile every channel in doubt; those Redis does not answer for stay in doubt."""
        await self.settle(list(self._presence.in_doubt))

    async def settle(self, channels: Iterable[str]) -> None:
        """Reconcile ``channels`` now, a heartbeat's share per round trip; raises if Redis
        does not answer, leaving those not reconciled yet in doubt."""
        presence = self._presence
        pending = list(channels)
        presence.in_doubt.update(pending)
        for batch in round_trips(pending, self._connections_here):
            epoch = presence.epoch
            await self.reconcile(batch)
            if epoch == presence.epoch:  # else registered for an instance claimed meanwhile
                presence.in_doubt.difference_update(batch)

    async def _drop_vacated(self) -> None:
        # Reconciled with no socket here (what a failed leave left goes), then unrecorded;
        # if Redis does not answer, the sweep (over recorded channels too) gets to them.
        presence = self._presence
        vacated, presence.vacated = list(presence.vacated), set()
        for batch in round_trips(vacated, self._connections_here):
            await self.reconcile(batch)
            async with presence.gate.reconciliation(*batch):
                empty = [c for c in batch if not self._local.local_members(c)]
                if empty:
                    await self._client.srem(self._keys.worker_channels(presence.instance), *empty)
                    presence.recorded_channels.difference_update(empty)

    def _connections_here(self, channel: str) -> int:
        return len(self._local.local_members(channel))

    def _swept_channels(self) -> list[str]:
        # Every channel where this instance may own an entry: those it holds sockets in,
        # and those it recorded, sockets or not (a leave that failed left one behind).
        presence = self._presence
        return list({*self._local.local_channels(), *presence.recorded_channels, *presence.vacated})

    async def _sweep_some(self) -> None:
        """Reconcile this heartbeat's share of the sweep over every channel this instance
        may own an entry in (its record in Redis read at each sweep's start)."""
        presence = self._presence
        if self._sweep.starts_next:
            record = await self._client.smembers(self._keys.worker_channels(presence.instance))
            presence.recorded_channels.update(text(channel) for channel in record)
        share = self._sweep.share()
        if share:
            await self.reconcile(share)
            self._sweep.done(share)
            presence.vacated.update(c for c in share if not self._local.local_members(c))

    # -- heartbeat and reaping ---------------------------------------------------------

    async def beat(self) -> None:
        """Renew the heartbeat. If this instance was claimed meanwhile (it stalled past its
        TTL, or Redis lost its keys), move to a new epoch and doubt every channel."""
        presence = self._presence
        if await self._renew() and self._beating:
            retired = presence.instance
            presence.epoch += 1
            self._retired.append(retired)
            presence.recorded_channels.clear()
            presence.in_doubt.update(self._local.local_channels())
            presence.directory.doubt()
            logger.warning(
                "presence of %s was lost (stalled past its TTL, or Redis lost it); "
                "registering it again as %s",
                retired,
                presence.instance,
            )
            await self._renew()
        self._beating = True

    async def _renew(self) -> bool:
        """Write the heartbeat (and the settings announcement, if Redis lost it); True if
        it had expired or the channel record was claimed."""
        presence = self._presence
        ttl_ms = int(self._settings.heartbeat_ttl * 1000)
        instance = presence.instance
        async with self._beat_client.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.heartbeat(instance), "1", px=ttl_ms, get=True)
            pipe.sadd(self._keys.workers, instance)
            pipe.exists(self._keys.worker_channels(instance))
            announced.restore(pipe, self._keys, self._settings)
            previous, _, recorded, *restored = await pipe.execute()
        if any(restored):
            logger.warning("Redis had lost the workers' settings; announced them again")
        return previous is None or bool(presence.recorded_channels and not recorded)

    async def keep(self) -> None:
        """One heartbeat's upkeep: settle what is in doubt, sweep, reap."""
        presence = self._presence
        await self.reconcile_in_doubt()
        await self._drop_vacated()
        await self._sweep_some()
        await presence.directory.keep()
        while self._retired and not presence.in_doubt:
            # What an earlier instance still owns is not live (or was given to this one).
            await self.reap(self._retired[0], force=True)
            self._retired.pop(0)
        await self.reaper.reap_dead(presence.instance, spare=self._retired)

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
        presence = self._presence
        for instance in [*self._retired, presence.instance]:
            await self.reap(instance, force=True)
        self._retired.clear()

    async def reap(self, instance: str, *, force: bool = False) -> int:
        """Remove what a worker instance registered; -1 if it turned out alive (``force``
        removes it all the same: a worker's own shutdown). See :class:`Reaper`."""
        presence = self._presence
        return await self.reaper.reap(instance, by=presence.instance, force=force)
