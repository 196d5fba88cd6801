"""Ids seen lately, to drop repeats (a publish retried after a timeout arrives twice)."""

from __future__ import annotations

from collections import deque

#: Publication ids remembered to drop repeats.
SEEN_PUBLICATIONS = 16_384


class RecentIds:
    """The last ``capacity`` ids seen: a set to look them up, a deque to forget the oldest.

    (An insertion-ordered dict would hold both, but forgetting its oldest key with
    ``next(iter(d))`` walks over every slot deleted before it until the dict is resized:
    microseconds per id once it is full. Here each step takes constant time.)
    """

    __slots__ = ("_capacity", "_ids", "_order")

    def __init__(self, capacity: int) -> None:
        self._ids: set[str] = set()
        self._order: deque[str] = deque()
        self._capacity = capacity

    def add(self, item: str) -> bool:
        """Remember ``item``; False if it was seen already."""
        ids = self._ids
        if item in ids:
            return False
        ids.add(item)
        order = self._order
        order.append(item)
        if len(order) > self._capacity:
            ids.discard(order.popleft())
        return True
