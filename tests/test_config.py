"""Settings, credentials and wire formats: pure functions, checked without any server."""

from __future__ import annotations

import msgpack
import pytest

from fastapi_pubsub_cluster import (
    ConfigurationError,
    InvalidChannelError,
    MalformedMessageError,
    PubSubSettings,
    RedisCredentials,
)
from fastapi_pubsub_cluster.backends.redis import redis_url_from
from fastapi_pubsub_cluster.codec import (
    Envelope,
    EventKind,
    OutgoingFrame,
    decode_client_binary,
    decode_client_text,
    decode_envelope,
    encode_envelope,
)


def test_settings_read_from_environment_variables() -> None:
    settings = PubSubSettings.from_env(
        {
            "PUBSUB_REDIS_URL": "redis://cache:6379/2",
            "PUBSUB_HEARTBEAT_TTL": "9.5",
            "PUBSUB_SEND_QUEUE_SIZE": "64",
            "PUBSUB_SLOW_CLIENT_POLICY": "drop_oldest",
        }
    )
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.heartbeat_ttl == 9.5
    assert settings.send_queue_size == 64
    assert settings.slow_client_policy == "drop_oldest"


def test_keyword_overrides_win_over_the_environment() -> None:
    settings = PubSubSettings.from_env({"PUBSUB_KEY_PREFIX": "env"}, key_prefix="explicit")
    assert settings.key_prefix == "explicit"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PUBSUB_HEARTBEAT_TTL", "soon"),
        ("PUBSUB_SEND_QUEUE_SIZE", "0"),
        ("PUBSUB_SLOW_CLIENT_POLICY", "ignore"),
        ("PUBSUB_WIRE_FORMAT", "xml"),
        ("PUBSUB_CHANNEL_ID_PATTERN", "[unclosed"),
    ],
)
def test_bad_settings_raise_configuration_error(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError):
        PubSubSettings.from_env({variable: value})


@pytest.mark.parametrize("channel", ["room-1", "user:42", "a.b_c@d/e", "x" * 200])
def test_valid_channel_ids_are_accepted(channel: str) -> None:
    assert PubSubSettings().validate_channel_id(channel) == channel


@pytest.mark.parametrize("channel", ["", "x" * 201, "with space", "new\nline", "star*", 42])
def test_invalid_channel_ids_are_rejected(channel: object) -> None:
    with pytest.raises(InvalidChannelError):
        PubSubSettings().validate_channel_id(channel)


def test_credentials_dict_as_in_the_original_package_becomes_a_url() -> None:
    url = redis_url_from(
        {"host": "redis.internal", "port": 6380, "username": "app", "password": "p@ss", "db": 3}
    )
    assert url == "redis://app:p%40ss@redis.internal:6380/3"


def test_credentials_object_and_url_forms() -> None:
    assert RedisCredentials(host="h", port=1, ssl=True).to_url() == "rediss://h:1/0"
    assert redis_url_from("rediss://h:6379/0") == "rediss://h:6379/0"

    class OriginalStyle:  # the seed's class: plain attributes
        host = "legacy"
        port = 6379
        username = None
        password = "secret"
        db = 1

    assert redis_url_from(OriginalStyle()) == "redis://:secret@legacy:6379/1"


@pytest.mark.parametrize(
    "credentials", ["http://nope", {"hostname": "typo"}, {"port": "not-a-number"}, 3.14]
)
def test_unusable_credentials_raise_configuration_error(credentials: object) -> None:
    with pytest.raises(ConfigurationError):
        redis_url_from(credentials)


def test_envelope_round_trip() -> None:
    envelope = Envelope(EventKind.MESSAGE, "room", "worker-1", "id-1", 0, {"a": [1, 2]})
    assert decode_envelope(encode_envelope(envelope)) == envelope


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        b"hello",
        msgpack.packb({"a": 1}),
        msgpack.packb([2, "m", "c", "o", "r", 0, None]),  # unknown version
        msgpack.packb([1, "z", "c", "o", "r", 0, None]),  # unknown kind
        msgpack.packb([1, "m", 5, "o", "r", 0, None]),  # wrong types
    ],
)
def test_foreign_bytes_are_not_envelopes(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode_envelope(data)


def test_payload_msgpack_cannot_hold_is_a_clear_error() -> None:
    with pytest.raises(MalformedMessageError):
        encode_envelope(Envelope(EventKind.MESSAGE, "c", "o", "r", 0, object()))
    with pytest.raises(MalformedMessageError):
        _ = OutgoingFrame({"raw": b"\x00"}).text  # bytes have no JSON form


def test_outgoing_frame_encodes_each_format_once() -> None:
    frame = OutgoingFrame({"n": 1})
    assert frame.text is frame.text
    assert frame.binary is frame.binary
    assert frame.text == '{"n":1}'


def test_client_frames_decode_or_raise() -> None:
    assert decode_client_text('{"a": 1}') == {"a": 1}
    assert decode_client_binary(msgpack.packb({"a": 1})) == {"a": 1}
    with pytest.raises(MalformedMessageError):
        decode_client_text("{")
    with pytest.raises(MalformedMessageError):
        decode_client_binary(b"\xc1")
