"""Exceptions and WebSocket close codes used by the library."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4.1) that the library sends."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007  # frame that is not valid JSON / msgpack
    POLICY_VIOLATION = 1008  # authorization denied, invalid channel, slow client
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # Redis link lost: reconnect and resync
    TRY_AGAIN_LATER = 1013


class PubSubError(Exception):
    """Root of every error raised by fastapi-pubsub-cluster."""


class ConfigurationError(PubSubError, ValueError):
    """Settings or Redis credentials that cannot be used."""


class InvalidChannelError(PubSubError, ValueError):
    """A channel id that is empty, too long or holds characters outside the allowed set."""


class MessageTooLargeError(PubSubError, ValueError):
    """A message over the configured maximum size."""


class MalformedMessageError(PubSubError, ValueError):
    """Bytes that do not decode as the expected JSON or msgpack structure."""


class BackendUnavailableError(PubSubError):
    """The backend (Redis) could not be reached, or did not answer in time."""


class PublishError(BackendUnavailableError):
    """A message could not be handed to the backend."""


class SettingsNotAnnouncedError(PublishError):
    """An outside publisher with no ``history_channels`` of its own found no settings
    announced in Redis while workers run (or Redis had just restarted), and none announced
    them within ``heartbeat_ttl``: it cannot tell whether a channel keeps history, so it
    publishes nothing rather than a message the channel's history would miss."""


class PresenceError(BackendUnavailableError):
    """A connection could not be registered, or presence could not be read."""


class HistoryError(BackendUnavailableError):
    """A channel's history could not be read."""


class HubClosedError(PubSubError):
    """The hub was used before `start()` or after `stop()`."""


class SubscriberOverflowError(PubSubError):
    """A server-side subscriber with the ``"error"`` policy fell a full queue behind: its
    iteration ends with this error (messages were lost)."""


class PresenceMetadataError(PubSubError, ValueError):
    """Presence metadata that is not a JSON object, or is over ``max_presence_metadata_bytes``."""


class ChannelLimitError(PubSubError, ValueError):
    """A socket asked to be in more channels than ``max_channels_per_socket``."""


class NotJoinedError(PubSubError, RuntimeError):
    """A further channel was joined or left on a socket that is not running (before
    :meth:`run` accepted it, or after it closed), or its own channel was left."""


class HubStartError(PubSubError):
    """The hub could not start in the app's lifespan (its backend is unreachable)."""


def describe(exc: BaseException) -> str:
    """What went wrong, for a log line or a close reason: the exception's own message
    ("No connection available.", "Connection refused", "Timeout reading from socket"),
    behind its class when that says more; never only the class (redis-py 8's ``repr()``
    of a ConnectionError is "network:ConnectionError")."""
    message = str(exc).strip()
    name = type(exc).__name__
    if not message:
        return name
    return message if name in message else f"{name}: {message}"
