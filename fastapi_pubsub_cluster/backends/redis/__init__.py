"""Everything Redis-specific: the backend, its links, presence, history, scripts, keys,
clients and URLs, and publishing from outside the app."""

from .backend import RedisBackend
from .credentials import RedisCredentials, RedisCredentialsLike, redis_url_from
from .keys import RedisKeys
from .publisher import RedisPublisher, publish_sync
from .runtime import MAX_REDIS_CONNECTIONS

__all__ = [
    "MAX_REDIS_CONNECTIONS",
    "RedisBackend",
    "RedisCredentials",
    "RedisCredentialsLike",
    "RedisKeys",
    "RedisPublisher",
    "publish_sync",
    "redis_url_from",
]
