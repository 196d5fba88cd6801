"""Ids seen lately, to drop repeats (a publish retried after a timeout arrives twice)."""

from __future__ import annotations

#: Publication ids remembered to drop repeats.
SEEN_PUBLICATIONS = 16_384


class RecentIds:
    """The last ``capacity`` ids seen, in arrival order."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        self._ids: dict[str, None] = {}
        self._capacity = capacity

    def add(self, item: str) -> bool:
        """Remember ``item``; False if it was seen already."""
        ids = self._ids
        if item in ids:
            return False
        ids[item] = None
        if len(ids) > self._capacity:
            del ids[next(iter(ids))]
        return True
