"""Per-connection limits on what one client sends (token buckets), remembered per address.

A client's allowance outlives its connection: when a socket ends, what is left of its buckets
is kept under the client's address for as long as it takes them to refill, so reconnecting
does not buy a fresh burst. An address closed for flooding may be refused for a cool-down
before its next handshake is accepted, which costs the worker far less than a join and a leave.
Both memories are small LRU maps, bounded by :data:`REMEMBERED_ADDRESSES`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

#: Seconds of traffic a bucket holds: the burst a client may send at once.
BURST_SECONDS = 2.0
#: Addresses remembered at most (least recently used forgotten first), per map and worker.
REMEMBERED_ADDRESSES = 10_000

_V = TypeVar("_V")


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; starts full."""

    __slots__ = ("_clock", "_tokens", "_updated", "capacity", "rate")

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def refill(self) -> float:
        """Add what accrued since the last call; returns the tokens available."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return self._tokens

    def take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are that many; False (nothing taken) otherwise."""
        if self.refill() < amount:
            return False
        self._tokens -= amount
        return True

    def wait_time(self, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are available (0 if they are now)."""
        return max(0.0, (amount - self.refill()) / self.rate)

    def full_in(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.refill()) / self.rate

    def restore(self, tokens: float) -> None:
        """Start from ``tokens`` (at most the capacity) instead of full."""
        self.refill()
        self._tokens = min(self.capacity, max(0.0, tokens))


class InboundLimiter:
    """What one client may send: messages and bytes per second, each 0 for unlimited.

    Buckets hold :data:`BURST_SECONDS` worth, and the byte bucket at least
    ``max_message_bytes`` so that one message of the largest allowed size always fits.
    """

    __slots__ = ("_bytes", "_messages", "limited")

    def __init__(
        self,
        messages_per_second: float,
        bytes_per_second: float,
        max_message_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._messages = (
            TokenBucket(messages_per_second, max(1.0, BURST_SECONDS * messages_per_second), clock)
            if messages_per_second > 0
            else None
        )
        self._bytes = (
            TokenBucket(
                bytes_per_second,
                max(float(max_message_bytes), BURST_SECONDS * bytes_per_second),
                clock,
            )
            if bytes_per_second > 0
            else None
        )
        #: Messages found over a rate so far.
        self.limited = 0

    def admit(self, size: int) -> bool:
        """True if a message of ``size`` bytes is within the limits (and count it)."""
        if self.delay(size) > 0:
            self.limited += 1
            return False
        self._take(size)
        return True

    def delay(self, size: int) -> float:
        """Seconds until a message of ``size`` bytes fits within the limits (0: it does now)."""
        messages, data = self._messages, self._bytes
        return max(
            0.0 if messages is None else messages.wait_time(1),
            0.0 if data is None else data.wait_time(size),
        )

    def take(self, size: int, *, limited: bool) -> None:
        """Count a message of ``size`` bytes, however far over the limits (a caller that
        waited out :meth:`delay`); ``limited``: it had to wait."""
        self.limited += limited
        self._take(size)

    def _take(self, size: int) -> None:
        # After waiting out delay() both buckets hold enough, up to float rounding.
        if self._messages is not None and not self._messages.take(1):
            self._messages.restore(0.0)
        if self._bytes is not None and not self._bytes.take(size):
            self._bytes.restore(0.0)

    def levels(self) -> tuple[float, float] | None:
        """What the buckets hold now, or None if they are full (nothing worth remembering)."""
        messages, data = self._messages, self._bytes
        if (messages is None or messages.full_in() <= 0) and (data is None or data.full_in() <= 0):
            return None
        return (
            messages.refill() if messages is not None else 0.0,
            data.refill() if data is not None else 0.0,
        )

    def full_in(self) -> float:
        """Seconds until every bucket is full again."""
        return max(
            0.0 if self._messages is None else self._messages.full_in(),
            0.0 if self._bytes is None else self._bytes.full_in(),
        )

    def restore(self, levels: tuple[float, float]) -> None:
        """Start from remembered ``levels`` (see :meth:`levels`) instead of full buckets."""
        if self._messages is not None:
            self._messages.restore(levels[0])
        if self._bytes is not None:
            self._bytes.restore(levels[1])


class _ExpiringLru(Generic[_V]):
    """At most ``size`` entries, each forgotten at its deadline or when least recently used."""

    __slots__ = ("_clock", "_entries", "_size")

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, _V]] = OrderedDict()

    def put(self, key: str, value: _V, lifetime: float) -> None:
        self._entries[key] = (self._clock() + lifetime, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def get(self, key: str) -> tuple[float, _V] | None:
        """(seconds left, value), or None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry[0] - self._clock()
        if left <= 0:
            del self._entries[key]
            return None
        return left, entry[1]

    def __len__(self) -> int:
        return len(self._entries)


class InboundAllowances:
    """A worker's memory of client addresses: allowances left and flooding cool-downs.

    One per hub. ``cooldown`` is the seconds an address closed for flooding is refused
    (0: never refused). Clients without an address (``None``) are never remembered.
    """

    __slots__ = (
        "_clock",
        "_cooldowns",
        "_levels",
        "bytes_per_second",
        "cooldown",
        "max_message_bytes",
        "messages_per_second",
    )

    def __init__(
        self,
        messages_per_second: float,
        bytes_per_second: float,
        max_message_bytes: int,
        cooldown: float = 0.0,
        size: int = REMEMBERED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.messages_per_second = messages_per_second
        self.bytes_per_second = bytes_per_second
        self.max_message_bytes = max_message_bytes
        self.cooldown = cooldown
        self._clock = clock
        self._levels: _ExpiringLru[tuple[float, float]] = _ExpiringLru(size, clock)
        self._cooldowns: _ExpiringLru[None] = _ExpiringLru(size, clock)

    def limiter(self, address: str | None) -> InboundLimiter:
        """A limiter for a new connection from ``address``: starting where the address's
        last connection left off, if its buckets have not refilled since."""
        limiter = InboundLimiter(
            self.messages_per_second, self.bytes_per_second, self.max_message_bytes, self._clock
        )
        remembered = self._levels.get(address) if address is not None else None
        if remembered is not None:
            limiter.restore(remembered[1])
        return limiter

    def release(self, address: str | None, limiter: InboundLimiter, flooded: bool) -> None:
        """Remember what ``limiter`` holds as its connection ends; ``flooded``: it went over
        a rate, which starts the address's cool-down (when ``cooldown`` is set)."""
        if address is None:
            return
        levels = limiter.levels()
        if levels is not None:
            self._levels.put(address, levels, limiter.full_in())
        if flooded and self.cooldown > 0:
            self._cooldowns.put(address, None, self.cooldown)

    def cooling_down(self, address: str | None) -> float:
        """Seconds left of ``address``'s cool-down (0: it may connect)."""
        entry = self._cooldowns.get(address) if address is not None else None
        return 0.0 if entry is None else entry[0]
