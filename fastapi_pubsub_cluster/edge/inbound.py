"""Parsing what clients send: strict JSON text frames and msgpack binary frames."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack  # type: ignore[import-untyped]

from ..errors import MalformedMessageError
from ..payloads import INT_MAX, INT_MIN, MAX_NESTING_DEPTH, all_finite


def decode_client_text(text: str) -> Any:
    """Parse a client's text frame as strict JSON: no NaN or infinities, integers that fit
    64 bits, nesting at most :data:`MAX_NESTING_DEPTH` deep; else MalformedMessageError."""
    # Nesting cannot exceed the number of opening brackets: most frames skip the walk.
    may_nest = text.count("[") + text.count("{") > MAX_NESTING_DEPTH
    try:
        data = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except RecursionError as exc:
        raise MalformedMessageError("text frame is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedMessageError(f"text frame is not valid JSON: {exc}") from exc
    if may_nest:
        _check_depth(data)
    return data


def decode_client_binary(data: bytes) -> Any:
    """Parse a client's binary frame as msgpack, to the same rules as text frames (no NaN
    or infinities, no extension types, no bytes as map keys, nesting at most
    :data:`MAX_NESTING_DEPTH` deep)."""
    try:
        decoded = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_reject_ext)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMessageError(f"binary frame is not valid msgpack: {exc}") from exc
    # Container headers and float markers are bytes in known ranges: most frames hold too
    # few of them to need the walk.
    if len(data.translate(None, _NOT_CONTAINER_HEADERS)) > MAX_NESTING_DEPTH:
        _check_depth(decoded)
    if (b"\xcb" in data or b"\xca" in data) and not all_finite(decoded):
        raise MalformedMessageError("binary frame holds NaN or an infinity")
    # bin markers: only then can a map key be bytes, which JSON clients could not receive.
    if (b"\xc4" in data or b"\xc5" in data or b"\xc6" in data) and _has_bytes_key(decoded):
        raise MalformedMessageError("binary frame has a map key that is bytes, not a string")
    return decoded


def _has_bytes_key(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if any(isinstance(key, bytes) for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_CONTAINER_HEADERS = {*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF}
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if b not in _CONTAINER_HEADERS)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:20]}... is out of range")
    return value


def _bounded_int(literal: str) -> int:
    value = int(literal)
    if not INT_MIN <= value <= INT_MAX:
        raise ValueError(f"integer {literal[:20]}... does not fit 64 bits")
    return value


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not accepted")


def _check_depth(value: Any) -> None:
    """MalformedMessageError if ``value`` nests deeper than MAX_NESTING_DEPTH (iterative:
    the depth checked is the attacker's, so no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, list | dict):
                if depth >= MAX_NESTING_DEPTH:
                    raise MalformedMessageError(
                        f"frame nests deeper than {MAX_NESTING_DEPTH} levels"
                    )
                stack.append((child, depth + 1))
    return None
