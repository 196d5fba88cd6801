"""Mirrors that drifted from their channel in Redis, found and reloaded.

A worker's mirror of a channel applies the join and leave events numbered after the last
one it applied. Two faults defeat that without any link noticing: events lost on their way
(published by a primary that then failed over, to links that had moved), and a counter that
went back (a failover to a replica that had not yet got the last joins: later events then
carry numbers the mirror has passed, and are ignored as old). Once a beat, each mirrored
channel's (number, members) is compared with (its counter, its set's size) in Redis:

- a counter below the mirror's number went back: reload now;
- any other difference, found twice in a row with the mirror not having moved in between:
  the events that would explain it are not on their way but lost: reload. (Once alone is
  the ordinary case of events in flight.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from ...core.backend import FanOutSink
from ...errors import describe
from ...metrics import Metrics
from .clients import REDIS_DOWN, CommandClient
from .keys import RedisKeys

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Channels read per round trip (two commands each).
CHANNELS_PER_ROUND_TRIP = 500
#: Channels checked per beat: a worker with more checks them in turns (those that differed
#: last time are checked again whatever their turn).
CHANNELS_PER_CHECK = 2000


class MirrorCheck:
    """Compares this worker's mirrors with their channels in Redis; reloads the stale ones."""

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        sink: FanOutSink,
        reload: Callable[[str], Awaitable[None]],
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._keys = keys
        self._sink = sink
        self._reload = reload
        self._metrics = metrics
        # Channel -> the mirror's state when it was last found to differ from Redis.
        self._differing: dict[str, tuple[int, int]] = {}
        self._turn = 0  # where the next share of a long list of channels starts

    async def keep_forever(self, interval: float, channels: Callable[[], Sequence[str]]) -> None:
        """:meth:`run` over ``channels()`` every ``interval`` seconds (a quarter of it after
        a difference). Supervised: a failure is logged (and counted unless it is Redis not
        answering), and the loop goes on."""
        while True:
            # Sooner when a mirror differed: events in flight arrive within milliseconds,
            # so a second look soon tells lost from late.
            await asyncio.sleep(interval / 4 if self._differing else interval)
            try:
                reloaded = await self.run(self._share(channels()))
            except REDIS_DOWN as exc:
                logger.debug("mirror check skipped (%s)", describe(exc))  # the link reports outages
            except Exception:
                logger.exception("mirror check failed; going on")
                self._metrics.loop_restarted("mirrors")
            else:
                if reloaded:
                    logger.warning(
                        "membership of %d channel(s) had drifted from Redis (events lost, or "
                        "a counter gone back after a failover); reloaded: %s",
                        len(reloaded),
                        ", ".join(reloaded[:5]),
                    )

    def _share(self, channels: Sequence[str]) -> list[str]:
        """This beat's channels: all, or the next :data:`CHANNELS_PER_CHECK` of them."""
        if len(channels) <= CHANNELS_PER_CHECK:
            return list(channels)
        start = self._turn % len(channels)
        self._turn = start + CHANNELS_PER_CHECK
        share = [*channels[start:], *channels[:start]][:CHANNELS_PER_CHECK]
        taken = set(share)
        return share + [channel for channel in self._differing if channel not in taken]

    async def run(self, channels: Sequence[str]) -> list[str]:
        """Check the mirrors of ``channels``; reload those found stale, and return them."""
        mirrored = [
            (channel, state)
            for channel in channels
            if (state := self._sink.mirror_state(channel)) is not None
        ]
        in_redis = await self._read([channel for channel, _ in mirrored])
        stale: list[str] = []
        differing: dict[str, tuple[int, int]] = {}
        for (channel, state), (counter, size) in zip(mirrored, in_redis, strict=True):
            if counter < state[0] or (
                (counter, size) != state and self._differing.get(channel) == state
            ):
                stale.append(channel)
            elif (counter, size) != state:
                differing[channel] = state
        self._differing = differing
        for channel in stale:
            await self._reload(channel)
        return stale

    async def _read(self, channels: list[str]) -> list[tuple[int, int]]:
        """(counter, set size) of each channel, a round trip per
        :data:`CHANNELS_PER_ROUND_TRIP`."""
        found: list[tuple[int, int]] = []
        for start in range(0, len(channels), CHANNELS_PER_ROUND_TRIP):
            pipe = self._client.pipeline(transaction=False)
            for channel in channels[start : start + CHANNELS_PER_ROUND_TRIP]:
                pipe.get(self._keys.seq(channel))
                pipe.scard(self._keys.members(channel))
            replies = await pipe.execute()
            found.extend(
                (int(replies[i] or 0), int(replies[i + 1])) for i in range(0, len(replies), 2)
            )
        return found
