"""Which pages may open a socket: the check against cross-site WebSocket hijacking.

Browsers send cookies with a WebSocket handshake whatever page opens it, and WebSockets are
not bound by CORS: without this check any site a user visits can talk to the app as them.
"""

from __future__ import annotations

import re
from functools import lru_cache

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """True if a handshake with this ``Origin`` header may proceed.

    No Origin header (a non-browser client) is always allowed. With ``allowed`` empty, only
    the same origin is: the Origin's host[:port] must equal the ``Host`` header. Otherwise
    the Origin must match one entry: an exact origin (``https://app.example.com``), a
    pattern whose ``*`` stands for one or more host labels or a port
    (``https://*.example.com``, ``http://localhost:*``), or ``*`` for any origin.
    """
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if not allowed:
        return host is not None and _authority(origin) == _strip_default_port(
            host.strip().lower(), _scheme(origin)
        )
    return any(_pattern(entry).fullmatch(origin) is not None for entry in allowed)


def _scheme(origin: str) -> str:
    return origin.partition("://")[0]


def _authority(origin: str) -> str | None:
    scheme, separator, authority = origin.partition("://")
    if not separator or not authority or "/" in authority:
        return None  # "null" (sandboxed pages, file://) and anything unparseable
    return _strip_default_port(authority, scheme)


def _strip_default_port(authority: str, scheme: str) -> str:
    host, colon, port = authority.rpartition(":")
    if colon and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        return host
    return authority


@lru_cache(maxsize=256)
def _pattern(entry: str) -> re.Pattern[str]:
    entry = entry.strip().rstrip("/").lower()
    if entry == "*":
        return re.compile(r".*", re.DOTALL)
    return re.compile(r"[^/:]+".join(re.escape(part) for part in entry.split("*")))
