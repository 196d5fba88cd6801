"""All tunables in one object, with documented defaults and environment overrides."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from .errors import ConfigurationError, InvalidChannelError, MessageTooLargeError

SlowClientPolicy = Literal["disconnect", "drop_oldest"]
InboundRatePolicy = Literal["disconnect", "drop"]
WireFormat = Literal["json", "msgpack"]

ENV_PREFIX = "PUBSUB_"

logger = logging.getLogger("fastapi_pubsub_cluster")

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


@dataclass(frozen=True, slots=True)
class PubSubSettings:
    """Configuration of a hub and its connection manager.

    Every field can be set from the environment as ``PUBSUB_<FIELD NAME IN CAPITALS>``
    (see :meth:`from_env`).
    """

    #: Redis URL (``redis://``, ``rediss://``, ``unix://``); ``None`` selects the in-memory manager.
    redis_url: str | None = None
    #: Prefix of every Redis key and pub/sub channel the library uses.
    key_prefix: str = "pubsub"
    #: Seconds a worker's heartbeat key lives; a dead worker's presence is reaped within 2x this.
    heartbeat_ttl: float = 6.0
    #: Largest client frame or published payload accepted, in bytes.
    max_message_bytes: int = 1024 * 1024
    #: Longest channel id accepted.
    max_channel_id_length: int = 200
    #: Characters allowed in a channel id (a full-match regular expression).
    channel_id_pattern: str = r"[A-Za-z0-9_.:@/+=-]+"
    #: Messages that may wait for one client before the slow-client policy applies.
    send_queue_size: int = 512
    #: ``"disconnect"`` closes a slow client with 1008; ``"drop_oldest"`` drops its oldest message.
    slow_client_policy: SlowClientPolicy = "disconnect"
    #: Wire format to browsers unless a socket asks otherwise (``?format=msgpack``).
    wire_format: WireFormat = "json"
    #: Seconds one Redis command may take before it counts as failed.
    redis_timeout: float = 2.0
    #: First and largest delay between attempts to reconnect the subscriber link, in seconds.
    reconnect_delay_initial: float = 0.1
    reconnect_delay_max: float = 5.0
    #: Seconds given to a client to receive its close frame (slow client, shutdown).
    close_timeout: float = 5.0
    #: Seconds between probes of the pub/sub link (a message to itself); 0 turns probes off.
    probe_interval: float = 5.0
    #: Seconds a probe may take to come back before the link counts as deaf and is renewed.
    probe_timeout: float = 2.0
    #: Close local clients with 1012 after the Redis link was lost, so that they reconnect
    #: and resync, instead of only calling the ``on_reconnect`` hooks.
    close_clients_on_reconnect: bool = False
    #: Channels that keep history (a full-match regular expression; empty: none). Their
    #: clients receive ``{"id": ..., "data": ...}`` and may resume with ``?since=<id>``.
    history_channels: str = ""
    #: Messages kept per channel with history (approximately, for Redis streams).
    history_size: int = 1000
    #: Seconds a channel's history lives after its last message.
    history_ttl: float = 86400.0
    #: Origins whose pages may open sockets (``https://app.example.com``, ``https://*.example.com``,
    #: ``*``); empty: same origin only. Requests without an Origin header are always allowed.
    allowed_origins: tuple[str, ...] = ()
    #: Messages and bytes per second one client may send (bursts of 2 s); 0 is unlimited.
    inbound_messages_per_second: float = 50.0
    inbound_bytes_per_second: int = 1048576
    #: Over those rates: ``"disconnect"`` closes the client with 1008; ``"drop"`` drops its message.
    inbound_rate_policy: InboundRatePolicy = "disconnect"
    _channel_regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _history_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive = (
            "heartbeat_ttl",
            "max_message_bytes",
            "max_channel_id_length",
            "send_queue_size",
        )
        timers = ("redis_timeout", "reconnect_delay_initial", "close_timeout")
        for name in (*positive, *timers, "history_size", "history_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.probe_interval < 0 or self.probe_timeout <= 0:
            raise ConfigurationError("probe_interval must be >= 0 and probe_timeout positive")
        if self.reconnect_delay_max < self.reconnect_delay_initial:
            raise ConfigurationError("reconnect_delay_max must be >= reconnect_delay_initial")
        if self.slow_client_policy not in ("disconnect", "drop_oldest"):
            raise ConfigurationError(f"unknown slow_client_policy {self.slow_client_policy!r}")
        if self.inbound_rate_policy not in ("disconnect", "drop"):
            raise ConfigurationError(f"unknown inbound_rate_policy {self.inbound_rate_policy!r}")
        if self.inbound_messages_per_second < 0 or self.inbound_bytes_per_second < 0:
            raise ConfigurationError("inbound rates must be >= 0 (0 is unlimited)")
        if self.wire_format not in ("json", "msgpack"):
            raise ConfigurationError(f"unknown wire_format {self.wire_format!r}")
        if not self.key_prefix:
            raise ConfigurationError("key_prefix must not be empty")
        try:
            regex = re.compile(self.channel_id_pattern)
        except re.error as exc:
            raise ConfigurationError(f"channel_id_pattern is not a valid regex: {exc}") from exc
        object.__setattr__(self, "_channel_regex", regex)
        try:
            history = re.compile(self.history_channels) if self.history_channels else None
        except re.error as exc:
            raise ConfigurationError(f"history_channels is not a valid regex: {exc}") from exc
        object.__setattr__(self, "_history_regex", history)

    def has_history(self, channel_id: str) -> bool:
        """True if ``channel_id`` keeps history (see ``history_channels``)."""
        return self._history_regex is not None and bool(self._history_regex.fullmatch(channel_id))

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
        if self._channel_regex.fullmatch(channel_id) is None:
            raise InvalidChannelError(
                f"channel id {channel_id[:50]!r} has characters outside {self.channel_id_pattern}"
            )
        return channel_id

    def with_changes(self, **changes: object) -> PubSubSettings:
        """A copy with some fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> PubSubSettings:
        """Build settings from ``PUBSUB_*`` variables; keyword ``overrides`` win over both."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in fields(cls):
            if not spec.init:
                continue
            raw = env.get(ENV_PREFIX + spec.name.upper())
            if raw is None:
                continue
            values[spec.name] = _parse(spec.name, raw, spec.default)
        known = {ENV_PREFIX + spec.name.upper() for spec in fields(cls)}
        for name in env:
            if (
                name.startswith(ENV_PREFIX)
                and name not in known
                and not name.startswith(ENV_PREFIX + "DEMO_")
            ):
                logger.warning("ignoring unknown setting %s (a typo?)", name)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError as exc:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    return raw or None if name == "redis_url" else raw
