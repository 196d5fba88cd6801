"""The garbage collector of a worker that holds many long-lived connections."""

from __future__ import annotations

import gc

#: Collections of the middle generation between two full ones (Python's default: 10).
MIDDLE_COLLECTIONS_PER_FULL = 1_000


def make_full_collections_rarer() -> None:
    """Make Python's full collections about 100 times rarer; young objects are collected as
    before. A full collection walks every object the process holds, so its cost grows with
    the connections a worker keeps, and a storm of thousands of reconnects, each leaving
    long-lived objects behind, triggers one after another: about a third of the CPU such a
    storm costs. Cyclic garbage that lives long enough to reach the oldest generation is
    freed later, not never. Idempotent; never lowers a threshold the application raised."""
    young, middle, full = gc.get_threshold()
    if full < MIDDLE_COLLECTIONS_PER_FULL:
        gc.set_threshold(young, middle, MIDDLE_COLLECTIONS_PER_FULL)
