"""In-process message history, with the same ids and trimming rules as a Redis stream."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from .codec import stream_id_order


class LocalHistory:
    """The last ``size`` messages of one channel, with stream-style ids ``<ms>-<seq>``."""

    def __init__(self, size: int, ttl: float) -> None:
        self._entries: deque[tuple[str, Any]] = deque()
        self._size = size
        self._ttl = ttl
        self._last = (0, 0)
        self._max_deleted: tuple[int, int] | None = None
        self._touched = time.monotonic()

    def append(self, payload: Any) -> str:
        """Store ``payload`` and return its id."""
        self._expire_if_idle()
        now_ms = int(time.time() * 1000)
        ms, seq = self._last
        self._last = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        stream_id = f"{self._last[0]}-{self._last[1]}"
        self._entries.append((stream_id, payload))
        if len(self._entries) > self._size:
            trimmed_id, _ = self._entries.popleft()
            self._max_deleted = stream_id_order(trimmed_id)
        self._touched = time.monotonic()
        return stream_id

    def after(self, since: str) -> tuple[list[tuple[str, Any]], str | None, bool]:
        """Entries after ``since``, the oldest id kept, and whether nothing after ``since``
        was trimmed away."""
        self._expire_if_idle()
        cutoff = stream_id_order(since)
        entries = [entry for entry in self._entries if stream_id_order(entry[0]) > cutoff]
        oldest = self._entries[0][0] if self._entries else None
        complete = self._max_deleted is None or self._max_deleted <= cutoff
        return entries, oldest, complete

    def _expire_if_idle(self) -> None:
        if self._entries and time.monotonic() - self._touched > self._ttl:
            self._max_deleted = stream_id_order(self._entries[-1][0])
            self._entries.clear()
