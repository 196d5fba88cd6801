"""Redis-first, horizontally scalable WebSocket pub/sub fan-out for FastAPI.

What applications import is here; the rest is importable from its module (see the API
reference): the backend contracts from ``core.backend``, every error from ``errors``.
"""

from .backends.memory import MemoryBackend
from .backends.redis import RedisBackend, RedisCredentials, RedisPublisher, publish_sync
from .client_script import client_script_route
from .core.subscription import Subscription
from .edge.hubs import current_hub
from .edge.sse import EventStream
from .edge.websocket import BasePubSubWebSocket
from .errors import (
    BackendUnavailableError,
    ChannelLimitError,
    CloseCode,
    ConfigurationError,
    InvalidChannelError,
    MalformedMessageError,
    MessageTooLargeError,
    NotJoinedError,
    PublishError,
    PubSubError,
    SettingsNotAnnouncedError,
    SubscriberOverflowError,
)
from .hub import PubSubHub
from .metrics import Metrics, PrometheusMetrics
from .settings import PubSubSettings

__all__ = [
    "BackendUnavailableError",
    "BasePubSubWebSocket",
    "ChannelLimitError",
    "CloseCode",
    "ConfigurationError",
    "EventStream",
    "InvalidChannelError",
    "MalformedMessageError",
    "MemoryBackend",
    "MessageTooLargeError",
    "Metrics",
    "NotJoinedError",
    "PrometheusMetrics",
    "PubSubError",
    "PubSubHub",
    "PubSubSettings",
    "PublishError",
    "RedisBackend",
    "RedisCredentials",
    "RedisPublisher",
    "SettingsNotAnnouncedError",
    "SubscriberOverflowError",
    "Subscription",
    "client_script_route",
    "current_hub",
    "publish_sync",
]

__version__ = "0.1.0"
