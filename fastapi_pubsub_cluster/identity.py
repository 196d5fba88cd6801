"""What a socket registers about itself: its user id and presence metadata, checked."""

from __future__ import annotations

import json
from typing import Any

from .errors import PresenceMetadataError


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
