"""What every payload must be, whoever sends it: finite numbers, bounded nesting."""

from __future__ import annotations

import math
from typing import Any

#: Deepest nesting of arrays and objects accepted in a client frame (JSON or msgpack) and in
#: presence metadata.
MAX_NESTING_DEPTH = 64
#: Integers a payload may hold: what msgpack (and so every client and worker) can carry.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def all_finite(value: Any) -> bool:
    """False if ``value`` holds NaN or an infinity anywhere (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True
