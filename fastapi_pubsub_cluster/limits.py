"""Per-connection limits: on what one client sends (token buckets), and on the user id and
presence metadata a socket registers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .errors import PresenceMetadataError

#: Seconds of traffic a bucket holds: the burst a client may send at once.
BURST_SECONDS = 2.0


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
        #: Messages refused so far.
        self.limited = 0

    def admit(self, size: int) -> bool:
        """True if a message of ``size`` bytes is within the limits (and count it)."""
        messages, data = self._messages, self._bytes
        fits = (messages is None or messages.refill() >= 1) and (
            data is None or data.refill() >= size
        )
        if not fits:
            self.limited += 1
            return False
        if messages is not None:
            messages.take(1)
        if data is not None:
            data.take(size)
        return True


def checked_user_id(user_id: object, max_length: int) -> str | None:
    """``user_id`` as a socket's user id: None, or a non-empty string of at most
    ``max_length`` characters; else :class:`PresenceMetadataError`."""
    if user_id is None:
        return None
    if not isinstance(user_id, str) or not user_id:
        raise PresenceMetadataError("a user id must be a non-empty string")
    if len(user_id) > max_length:
        raise PresenceMetadataError(
            f"user id is {len(user_id)} characters; the limit is {max_length}"
        )
    return user_id


def checked_presence_metadata(metadata: object, max_bytes: int) -> dict[str, Any] | None:
    """``metadata`` as presence metadata: None, or a JSON object of at most ``max_bytes``
    (compact JSON); else :class:`PresenceMetadataError`."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise PresenceMetadataError("presence metadata must be a dict (a JSON object)")
    try:
        size = len(json.dumps(metadata, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise PresenceMetadataError(f"presence metadata is not JSON: {exc}") from None
    if size > max_bytes:
        raise PresenceMetadataError(f"presence metadata is {size} bytes; the limit is {max_bytes}")
    return metadata
