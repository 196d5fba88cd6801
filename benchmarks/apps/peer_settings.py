"""What the peer apps read from the environment: the Redis URL and a per-run prefix."""

from __future__ import annotations

import os

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "bench")
#: Smallest workaround for encode/broadcaster's subscribe() race; see broadcaster_app.
BROADCASTER_LOCK = os.environ.get("BENCH_BROADCASTER_LOCK", "1") == "1"
#: fastapi_websocket_pubsub's sockets enter PubSubEndpoint.main_loop, which listens to the
#: broadcaster (needed with several workers); see permit_app.
PERMIT_LISTEN = os.environ.get("BENCH_PERMIT_LISTEN", "0") == "1"


def socketio_channel(prefix: str = PREFIX) -> str:
    """The Redis pub/sub channel of python-socketio's manager for this run."""
    return f"{prefix}-socketio"


def broadcaster_channel(channel: str, prefix: str = PREFIX) -> str:
    """The broadcaster channel name for a benchmark channel."""
    return f"{prefix}:{channel}"


def raw_topic(channel: str, prefix: str = PREFIX) -> str:
    """The Redis pub/sub channel of the hand-written redis-py loop for a benchmark channel."""
    return f"{prefix}:{channel}"
