"""Redis replies as Python values."""

from __future__ import annotations

import json
from typing import Any


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def metadata_of(raw: list[Any]) -> dict[str, Any]:
    """A metadata hash's HGETALL reply (flat pairs of id, JSON) as a dict; entries that are
    not JSON (not ours) are left out."""
    metadata: dict[str, Any] = {}
    for i in range(0, len(raw) - 1, 2):
        try:
            metadata[text(raw[i])] = json.loads(raw[i + 1])
        except ValueError:
            continue
    return metadata
