"""Free TCP ports on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Collection

#: How long ``free_port`` looks for a port whose companion port is free too.
FREE_PORT_TIMEOUT = 10.0


def free_port(also_free_at: int | None = None, exclude: Collection[int] = ()) -> int:
    """A TCP port on loopback that nothing listens on right now, not in ``exclude``.

    With ``also_free_at``, port + that offset is free too (a cluster node's bus port). The
    port may be taken by someone else before it is used: callers that start a server retry
    on another port when theirs was taken (see ``OwnedRedisServer.start``).
    """
    deadline = time.monotonic() + FREE_PORT_TIMEOUT
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in exclude and (
            also_free_at is None
            or (
                port + also_free_at < 65536
                and port + also_free_at not in exclude
                and is_free(port + also_free_at)
            )
        ):
            return port
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no free loopback port (with port + {also_free_at} free too) "
                f"within {FREE_PORT_TIMEOUT}s"
            )


def is_free(port: int) -> bool:
    """Whether ``port`` on loopback can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
