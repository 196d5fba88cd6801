"""The sweep that reconciles every channel of a worker in turn, whether or not anything
marked it in doubt: presence lost behind the worker's back (keys flushed, a failover to a
stale replica) comes back by itself."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection

#: Channels reconciled per heartbeat by the sweep, and per round trip (one pipeline)
#: whenever many are reconciled at once.
CHANNELS_PER_BEAT = 64
#: Heartbeats between the starts of two sweeps.
BEATS_PER_SWEEP = 10


class Sweep:
    """Which channels to reconcile at each heartbeat: a share of the current sweep, and a
    new sweep over every local channel every :data:`BEATS_PER_SWEEP` heartbeats."""

    def __init__(self, local_channels: Callable[[], Collection[str]]) -> None:
        self._local_channels = local_channels
        self._pending: deque[str] = deque()
        self._beats_since_start = BEATS_PER_SWEEP  # the first heartbeat starts one

    def share(self) -> list[str]:
        """This heartbeat's channels (none between sweeps); :meth:`done` once reconciled,
        else they come again at the next heartbeat."""
        if not self._pending:
            self._beats_since_start += 1
            if self._beats_since_start < BEATS_PER_SWEEP:
                return []
            self._beats_since_start = 0
            self._pending.extend(self._local_channels())
        return [self._pending[i] for i in range(min(CHANNELS_PER_BEAT, len(self._pending)))]

    def done(self, share: list[str]) -> None:
        """``share`` (from :meth:`share`) was reconciled."""
        for _ in share:
            self._pending.popleft()
