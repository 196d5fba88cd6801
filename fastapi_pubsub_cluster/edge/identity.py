"""What a socket registers about itself: its user id and presence metadata, checked."""

from __future__ import annotations

import math
from typing import Any

from ..envelope import encode_payload
from ..errors import MalformedMessageError, PresenceMetadataError
from ..frames import encode_json
from ..payloads import INT_MAX, INT_MIN, MAX_NESTING_DEPTH


def checked_user_id(user_id: object, max_length: int) -> str | None:
    """``user_id`` as a socket's user id: None, or a non-empty string of at most
    ``max_length`` characters that UTF-8 can hold (Redis stores it so); else
    :class:`PresenceMetadataError`."""
    if user_id is None:
        return None
    if not isinstance(user_id, str) or not user_id:
        raise PresenceMetadataError("a user id must be a non-empty string")
    if not user_id.isascii() and not _is_utf8(user_id):
        raise PresenceMetadataError("a user id must be valid UTF-8 text")
    if len(user_id) > max_length:
        raise PresenceMetadataError(
            f"user id is {len(user_id)} characters; the limit is {max_length}"
        )
    return user_id


def checked_presence_metadata(metadata: object, max_bytes: int) -> dict[str, Any] | None:
    """``metadata`` as presence metadata: None, or a JSON object that every wire format can
    carry (string keys, UTF-8 strings, integers that fit 64 bits, finite floats, nesting at
    most MAX_NESTING_DEPTH deep) of at most ``max_bytes`` (compact JSON); else
    :class:`PresenceMetadataError`."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise PresenceMetadataError("presence metadata must be a dict (a JSON object)")
    problem = _unencodable(metadata)
    if problem is not None:
        raise PresenceMetadataError(f"presence metadata {problem}")
    try:
        size = len(encode_json(metadata).encode())
        encode_payload(metadata)
    except (MalformedMessageError, UnicodeEncodeError) as exc:  # the walk should catch all
        raise PresenceMetadataError(f"presence metadata cannot be encoded: {exc}") from None
    if size > max_bytes:
        raise PresenceMetadataError(f"presence metadata is {size} bytes; the limit is {max_bytes}")
    return metadata


def _unencodable(metadata: dict[str, Any]) -> str | None:
    """What in ``metadata`` JSON or msgpack cannot carry, or None (iterative: the depth
    checked may be past the recursion limit)."""
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_NESTING_DEPTH:
                return f"nests deeper than {MAX_NESTING_DEPTH} levels"
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        return f"has a key that is not a string: {type(key).__name__}"
                    stack.append((key, depth))
                stack.extend((value, depth + 1) for value in item.values())
            else:
                stack.extend((value, depth + 1) for value in item)
        elif isinstance(item, str):
            if not _is_utf8(item):
                return "holds a string that is not valid Unicode (a lone surrogate)"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return "holds an integer that does not fit 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "holds NaN or an infinity"
        else:
            return f"holds a {type(item).__name__}, which is not a JSON type"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
