"""Redis-first, horizontally scalable WebSocket pub/sub fan-out for FastAPI."""

from .credentials import RedisCredentials
from .errors import (
    CloseCode,
    ConfigurationError,
    HubClosedError,
    InvalidChannelError,
    MalformedMessageError,
    MessageTooLargeError,
    PublishError,
    PubSubError,
)
from .hub import PubSubHub, close_implicit_hubs
from .managers.base import ConnectionManager
from .managers.memory import InMemoryConnectionManager
from .managers.redis import RedisConnectionManager
from .metrics import Metrics, PrometheusMetrics
from .publisher import RedisPublisher, publish_sync
from .settings import PubSubSettings
from .websocket import BasePubSubWebSocket

__all__ = [
    "BasePubSubWebSocket",
    "CloseCode",
    "ConfigurationError",
    "ConnectionManager",
    "HubClosedError",
    "InMemoryConnectionManager",
    "InvalidChannelError",
    "MalformedMessageError",
    "MessageTooLargeError",
    "Metrics",
    "PrometheusMetrics",
    "PubSubError",
    "PubSubHub",
    "PubSubSettings",
    "PublishError",
    "RedisConnectionManager",
    "RedisCredentials",
    "RedisPublisher",
    "close_implicit_hubs",
    "publish_sync",
]

__version__ = "0.1.0"
