"""All tunables in one object, with documented defaults and environment overrides.

``PubSubSettings(**values)`` builds from the defaults and ``values`` only; the environment
(``PUBSUB_*`` variables and a ``.env`` file) is read by :meth:`PubSubSettings.from_env` alone.
Every invalid value raises :class:`ConfigurationError` with a one-line message that names the
environment variable (or the field) and what it accepts, fit to stop a worker at startup.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .config_errors import describe_errors
from .environment import (
    DEMO_ENV_PREFIX,
    ENV_FILE,
    ENV_PREFIX,
    named_after_variables,
    read_environment,
    variable_names,
)
from .errors import ConfigurationError, InvalidChannelError, MessageTooLargeError

__all__ = ["DEMO_ENV_PREFIX", "ENV_FILE", "ENV_PREFIX", "Compression", "InboundRatePolicy"]
__all__ += ["PubSubSettings", "SlowClientPolicy", "WireFormat"]

SlowClientPolicy = Literal["disconnect", "drop_oldest"]
InboundRatePolicy = Literal["disconnect", "drop", "throttle"]
WireFormat = Literal["json", "msgpack"]
Compression = Literal["shared", "per-socket", "off"]

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+")


class PubSubSettings(BaseSettings):
    """Configuration of a hub and its connection manager.

    Every field can be set from the environment as ``PUBSUB_<FIELD NAME IN CAPITALS>``
    (see :meth:`from_env`). Instances are immutable: use :meth:`with_changes`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        env_file=None,
    )

    #: Redis URL: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://h:26379/service``
    #: or ``redis+cluster://h:port[,h:port]``; unset or empty: in memory, for one process.
    redis_url: str | None = Field(default=None, repr=False)
    #: Prefix of every Redis key and pub/sub channel the library uses. Apps sharing one
    #: Redis stay apart with different prefixes; a publisher must use the app's.
    key_prefix: str = "pubsub"
    #: Seconds a worker's heartbeat key lives. The presence of a worker that died without
    #: cleaning up is reaped within twice this.
    heartbeat_ttl: float = 6.0
    #: Largest client frame (else close 1009, cut while read under ``--ws``: never inflated
    #: past it) or published payload (else ``MessageTooLargeError``), in bytes.
    max_message_bytes: int = 1024 * 1024
    #: Longest channel id accepted (a longer one closes the socket with 1008); also the
    #: longest user id a socket may declare (``get_user_id``).
    max_channel_id_length: int = 200
    #: Characters allowed in a channel id (a regular expression that must match the whole id).
    channel_id_pattern: str = r"[A-Za-z0-9_.:@/+=-]+"
    #: Largest ``presence_metadata`` a socket may register (compact JSON, in bytes); more, or
    #: what every wire format cannot carry, closes the socket with 1008 before it joins.
    max_presence_metadata_bytes: int = 1024
    #: Channels one socket may be in at once: its own and those it joins at runtime
    #: (``self.join``, or a client's ``{"join": ...}``, which is then refused).
    max_channels_per_socket: int = 32
    #: Tagged sockets' ``presence`` events list the members (with metadata) while a
    #: channel has at most this many; above it they carry the count only (0: never).
    presence_event_max_members: int = 100
    #: Messages that may wait for one client before the slow-client policy applies.
    send_queue_size: int = 512
    #: ``disconnect`` closes a client that fell that far behind with 1008; ``drop_oldest``
    #: drops its oldest pending message instead. Other clients are never held up.
    slow_client_policy: SlowClientPolicy = "disconnect"
    #: Format of messages to clients: ``json`` (text frames) or ``msgpack`` (binary
    #: frames); a socket may ask for the other with ``?format=msgpack`` or ``?format=json``.
    wire_format: WireFormat = "json"
    #: Seconds one Redis command may take before it counts as failed (publishing then
    #: raises ``PublishError`` instead of hanging).
    redis_timeout: float = 2.0
    #: First delay, in seconds, before reconnecting a lost Redis pub/sub link; it doubles on
    #: each failed attempt.
    reconnect_delay_initial: float = 0.1
    #: Largest delay between reconnection attempts, in seconds.
    reconnect_delay_max: float = 5.0
    #: Seconds a client is given to receive its close frame (slow client, shutdown).
    close_timeout: float = 5.0
    #: Seconds between probes of each pub/sub link (a message to itself; a link whose probe
    #: does not come back is renewed); 0 turns probes off.
    probe_interval: float = 5.0
    #: Seconds a probe may take to come back before the link counts as deaf.
    probe_timeout: float = 2.0
    #: After a lost Redis link, close the affected clients with 1012 so that they reconnect
    #: and resync, instead of only calling the ``on_reconnect`` hooks.
    close_clients_on_reconnect: bool = False
    #: Channels that keep history (a regex matching the whole id; empty: none); their clients
    #: get ``{"id": ..., "data": ...}`` and resume with ``?since=<id>``. Set it on the
    #: workers; publishers adopt it unless they set it too (Guarantees: history decision).
    history_channels: str = ""
    #: Messages kept per channel with history (approximately, in a Redis stream).
    history_size: int = 1000
    #: Seconds a channel's history lives after its last message.
    history_ttl: float = 86400.0
    #: Replicas that must have a history message before its publish succeeds (``WAIT``,
    #: within half ``redis_timeout``, else ``PublishError``); 0: the primary's word. Without
    #: it a failover may drop acknowledged history (replication is asynchronous). Not on a
    #: Redis Cluster.
    history_min_replicas: int = 0
    #: Origins whose pages may open a websocket besides the app's own (others: HTTP 403):
    #: exact (``https://app.example.com``), patterns (``https://*.example.com``) or ``*``,
    #: comma-separated. Handshakes without an Origin header (non-browsers) are always allowed.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    #: Messages one client may send per second, in bursts of up to 2 seconds' worth; 0:
    #: unlimited.
    inbound_messages_per_second: float = 50.0
    #: Bytes one client may send per second (bursts of 2 seconds' worth, and always one
    #: message of ``max_message_bytes``); 0: unlimited.
    inbound_bytes_per_second: int = 1024 * 1024
    #: Over an inbound rate: ``disconnect`` closes the client with 1008; ``throttle`` stops
    #: reading it until it is under the rate (TCP slows the sender, nothing is lost);
    #: ``drop`` reads and ignores its messages (costs the most). Kept per client address.
    inbound_rate_policy: InboundRatePolicy = "disconnect"
    #: Under ``disconnect``: seconds an address closed for going over an inbound rate is
    #: refused, before it joins, with 1008; 0: reconnects are not refused.
    inbound_cooldown: float = 10.0
    #: permessage-deflate under the library's protocol (``--ws``, the gunicorn worker):
    #: ``shared`` compresses a broadcast once per worker for every compressing socket;
    #: ``per-socket`` keeps a context per socket; ``off`` declines it.
    compression: Compression = "shared"
    #: Joins a worker lets wait for Redis at once (a storm of reconnects queues here, and
    #: is written in batches); further joins wait for room rather than being refused.
    admission_queue_size: int = 10_000
    #: Seconds between two runs of a channel's ``generate_object_to_send`` (and presence
    #: events) on one worker: the first event after a quiet period runs at once, a burst
    #: runs once per interval, and the last state always arrives; 0: after every event.
    presence_interval: float = 0.25
    #: Make Python's full garbage collections about 100 times rarer in a worker: each walks
    #: every object, so its cost grows with the connections held (a third of a storm's CPU).
    gc_tuning: bool = True

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            names = variable_names()
            raise ConfigurationError(describe_errors(exc, type(self).model_fields, names)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The constructor never reads the environment: from_env() does, explicitly.
        return (init_settings,)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return value or None

    @field_validator("compression", mode="before")
    @classmethod
    def _compression_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator(
        "heartbeat_ttl",
        "max_message_bytes",
        "max_channel_id_length",
        "max_presence_metadata_bytes",
        "max_channels_per_socket",
        "send_queue_size",
        "redis_timeout",
        "reconnect_delay_initial",
        "close_timeout",
        "probe_timeout",
        "history_size",
        "history_ttl",
        "admission_queue_size",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator(
        "presence_event_max_members",
        "history_min_replicas",
        "probe_interval",
        "inbound_messages_per_second",
        "inbound_bytes_per_second",
        "inbound_cooldown",
        "presence_interval",
    )
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 (off) or positive")
        return value

    @field_validator("reconnect_delay_max")
    @classmethod
    def _not_below_initial_delay(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("reconnect_delay_initial")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least the initial delay ({initial})")
        return value

    @field_validator("channel_id_pattern", "history_channels")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            _compiled(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(
                str(item).strip().rstrip("/").lower() for item in value if str(item).strip()
            )
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and _ORIGIN.fullmatch(origin) is None:
                raise ValueError(
                    f"{origin!r} is not an origin like https://example.com, a pattern like "
                    "https://*.example.com, or *"
                )
        return value

    def has_history(self, channel_id: str) -> bool:
        """True if ``channel_id`` keeps history (see ``history_channels``)."""
        return bool(self.history_channels) and bool(
            _compiled(self.history_channels).fullmatch(channel_id)
        )

    def check_message_size(self, size: int) -> None:
        """Raise :class:`MessageTooLargeError` if ``size`` bytes exceed ``max_message_bytes``."""
        if size > self.max_message_bytes:
            raise MessageTooLargeError(
                f"message is {size} bytes; the limit is {self.max_message_bytes}"
            )

    @staticmethod
    def validate_stream_id(stream_id: str) -> str:
        """Return a resume position ``<ms>-<seq>`` if well formed, else raise."""
        if _STREAM_ID.fullmatch(stream_id) is None or any(
            int(part) > 2**64 - 1 for part in stream_id.split("-")
        ):
            raise InvalidChannelError(f"resume position {stream_id[:40]!r} is not a stream id")
        return stream_id

    def validate_channel_id(self, channel_id: object) -> str:
        """Return ``channel_id`` if it is acceptable, else raise :class:`InvalidChannelError`."""
        if not isinstance(channel_id, str) or not channel_id:
            raise InvalidChannelError("channel id must be a non-empty string")
        if len(channel_id) > self.max_channel_id_length:
            raise InvalidChannelError(
                f"channel id is {len(channel_id)} characters long; "
                f"the limit is {self.max_channel_id_length}"
            )
        if "{" in channel_id or "}" in channel_id:
            raise InvalidChannelError("channel id may not contain braces (Redis hash tags)")
        if _compiled(self.channel_id_pattern).fullmatch(channel_id) is None:
            raise InvalidChannelError(
                f"channel id {channel_id[:50]!r} has characters outside {self.channel_id_pattern}"
            )
        return channel_id

    def with_changes(self, **changes: object) -> PubSubSettings:
        """A copy with some fields replaced (validated like the original). Fields set
        explicitly stay so (``model_fields_set``), the others keep following their default."""
        return type(self)(**{**self.model_dump(include=self.model_fields_set), **changes})

    @classmethod
    def environment_variable(cls, field_name: str) -> str:
        """The environment variable that sets ``field_name``."""
        return ENV_PREFIX + field_name.upper()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> PubSubSettings:
        """Build settings from ``PUBSUB_*`` variables; keyword ``overrides`` win over both.

        With ``environ=None`` this reads ``os.environ`` and, under it, a ``.env`` file in the
        working directory. ``PUBSUB_DEMO_*`` variables belong to the demo and are skipped.
        A ``PUBSUB_*`` variable that looks like a typo of a setting is an error; any other
        unknown one is logged once per process.
        """
        known = {PubSubSettings.environment_variable(name) for name in PubSubSettings.model_fields}
        values = read_environment(cls, environ, known)
        from_environment = {
            name: cls.environment_variable(name) for name in values if name not in overrides
        }
        values.update(overrides)
        with named_after_variables(from_environment):
            return cls(**values)


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
