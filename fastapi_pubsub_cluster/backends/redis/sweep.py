"""The sweep that reconciles every channel of a worker in turn, whether or not anything
marked it in doubt: presence lost behind the worker's back (keys flushed, a failover to a
stale replica) comes back by itself."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence

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
