"""Redis-first, horizontally scalable WebSocket pub/sub fan-out for FastAPI."""

from .backends.memory import MemoryBackend
from .backends.redis import RedisBackend, RedisCredentials, RedisPublisher, publish_sync
from .client_script import client_script_route
from .core import Backend, FanOut
from .core.subscription import Subscription
from .edge.hubs import close_implicit_hubs, current_hub
from .edge.sse import EventStream
from .edge.websocket import BasePubSubWebSocket
from .errors import (
    BackendUnavailableError,
    ChannelLimitError,
    CloseCode,
    ConfigurationError,
    HistoryError,
    HubClosedError,
    InvalidChannelError,
    MalformedMessageError,
    MessageTooLargeError,
    NotJoinedError,
    PresenceError,
    PresenceMetadataError,
    PublishError,
    PubSubError,
    SettingsNotAnnouncedError,
    SubscriberOverflowError,
)
from .hub import PubSubHub
from .metrics import Metrics, PrometheusMetrics
from .settings import PubSubSettings

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "BasePubSubWebSocket",
    "ChannelLimitError",
    "CloseCode",
    "ConfigurationError",
    "EventStream",
    "FanOut",
    "HistoryError",
    "HubClosedError",
    "InvalidChannelError",
    "MalformedMessageError",
    "MemoryBackend",
    "MessageTooLargeError",
    "Metrics",
    "NotJoinedError",
    "PresenceError",
    "PresenceMetadataError",
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
    "close_implicit_hubs",
    "current_hub",
    "publish_sync",
]

__version__ = "0.1.0"
