"""Presence upkeep beside the heartbeat: the sweep that reconciles every channel of a
worker in turn, and the reaping of dead worker instances.

The sweep runs whether or not anything marked a channel in doubt, so that presence lost
behind the worker's back (keys flushed, a failover to a stale replica) comes back by
itself. Reaping removes the presence of worker instances that died (or that a worker left
behind).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence

from . import scripts
from .clients import CommandClient, text
from .directory import Directory
from .keys import RedisKeys

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


class Reaper:
    """Claims a dead worker instance (atomically, so that one live worker does) and removes
    every entry it owned, announcing each leave: in its channels, then in the directory."""

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        *,
        publish_command: str,
        directory: Directory,
    ) -> None:
        self._client = client
        self._keys = keys
        self._publish_command = publish_command
        self._directory = directory
        self._claim = client.register_script(scripts.CLAIM)
        self._reap_channel = client.register_script(scripts.REAP_CHANNEL)

    async def instances_of(self, worker_id: str) -> list[str]:
        """The instances of ``worker_id`` that the cluster lists."""
        workers = [text(w) for w in await self._client.smembers(self._keys.workers)]
        return [w for w in workers if w.startswith(f"{worker_id}#")]

    async def reap_dead(self, own: str, *, spare: Collection[str]) -> None:
        """Reap every instance but ``own`` and ``spare`` whose heartbeat expired."""
        client = self._client
        workers = [text(w) for w in await client.smembers(self._keys.workers)]
        others = [w for w in workers if w != own and w not in spare]
        if not others:
            return
        async with client.pipeline(transaction=False) as pipe:
            for worker in others:
                pipe.exists(self._keys.heartbeat(worker))
            alive = await pipe.execute()
        for worker, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                removed = await self.reap(worker, by=own)
                if removed >= 0:
                    logger.warning("reaped %d connections of dead worker %s", removed, worker)

    async def reap(self, instance: str, *, by: str, force: bool = False) -> int:
        """Remove what ``instance`` registered, in every channel it held and in the
        directory, announced as ``by``; -1 if it turned out alive (unless ``force``).

        The claim is atomic on the instance's own slot; the per-channel removals are not
        (they live on other slots), and remove only entries the claimed instance owns.
        """
        keys = self._keys
        channels = await self._claim(
            keys=[keys.heartbeat(instance), keys.worker_channels(instance)],
            args=["1" if force else "0"],
        )
        if channels is None:
            return -1
        removed = 0
        for raw in channels:
            channel = text(raw)
            removed += int(
                await self._reap_channel(
                    keys=keys.presence(channel),
                    args=[
                        self._publish_command,
                        keys.topic(channel),
                        channel,
                        by,
                        instance,
                        scripts.SEQ_IDLE_TTL_MS,
                    ],
                )
            )
        await self._directory.reap(instance)
        await self._client.srem(keys.workers, instance)
        return removed
