"""Settings, credentials and wire formats: pure functions, checked without any server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgpack
import pytest

from fastapi_pubsub_cluster import (
    ConfigurationError,
    InvalidChannelError,
    MalformedMessageError,
    MessageTooLargeError,
    PubSubSettings,
    RedisCredentials,
)
from fastapi_pubsub_cluster.backends.redis import redis_url_from
from fastapi_pubsub_cluster.edge.inbound import decode_client_binary, decode_client_text
from fastapi_pubsub_cluster.envelope import Envelope, EventKind, decode_envelope, encode_envelope
from fastapi_pubsub_cluster.frames import OutgoingFrame


def test_settings_read_from_environment_variables() -> None:
    settings = PubSubSettings.from_env(
        {
            "PUBSUB_REDIS_URL": "redis://cache:6379/2",
            "PUBSUB_HEARTBEAT_TTL": "9.5",
            "PUBSUB_SEND_QUEUE_SIZE": "64",
            "PUBSUB_SLOW_CLIENT_POLICY": "drop_oldest",
            "PUBSUB_CLOSE_CLIENTS_ON_RECONNECT": "true",
        }
    )
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.heartbeat_ttl == 9.5
    assert settings.send_queue_size == 64
    assert settings.slow_client_policy == "drop_oldest"
    assert settings.close_clients_on_reconnect is True


def test_keyword_overrides_win_over_the_environment() -> None:
    settings = PubSubSettings.from_env({"PUBSUB_KEY_PREFIX": "env"}, key_prefix="explicit")
    assert settings.key_prefix == "explicit"


def test_the_constructor_does_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_KEY_PREFIX", "from-env")
    monkeypatch.setenv("PUBSUB_SEND_QUEUE_SIZE", "not a number")
    assert PubSubSettings().key_prefix == "pubsub"
    assert PubSubSettings(send_queue_size=7).send_queue_size == 7


def test_the_constructor_does_not_read_a_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PUBSUB_KEY_PREFIX=from-dotenv\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert PubSubSettings().key_prefix == "pubsub"


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUBSUB_KEY_PREFIX", "from-env")
    assert PubSubSettings.from_env().key_prefix == "from-env"


def test_from_env_reads_a_dotenv_file_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "# deployment settings\nPUBSUB_KEY_PREFIX=from-dotenv\nPUBSUB_HISTORY_SIZE=42\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PUBSUB_KEY_PREFIX", raising=False)
    settings = PubSubSettings.from_env()
    assert settings.key_prefix == "from-dotenv"
    assert settings.history_size == 42


def test_the_process_environment_wins_over_the_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PUBSUB_KEY_PREFIX=from-dotenv\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUBSUB_KEY_PREFIX", "from-env")
    assert PubSubSettings.from_env().key_prefix == "from-env"


def test_an_explicit_environ_mapping_ignores_the_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PUBSUB_KEY_PREFIX=from-dotenv\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert PubSubSettings.from_env({}).key_prefix == "pubsub"


def test_foreign_variables_in_the_dotenv_file_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://db\nDEBUG=1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert PubSubSettings.from_env().key_prefix == PubSubSettings.from_env({}).key_prefix


@pytest.mark.parametrize("value", ["true", "True", "1", "yes", "on"])
def test_boolean_variables_accept_the_usual_true_spellings(value: str) -> None:
    settings = PubSubSettings.from_env({"PUBSUB_CLOSE_CLIENTS_ON_RECONNECT": value})
    assert settings.close_clients_on_reconnect is True


@pytest.mark.parametrize("value", ["false", "0", "no", "off"])
def test_boolean_variables_accept_the_usual_false_spellings(value: str) -> None:
    settings = PubSubSettings.from_env({"PUBSUB_CLOSE_CLIENTS_ON_RECONNECT": value})
    assert settings.close_clients_on_reconnect is False


@pytest.mark.parametrize("value", ["ture", "enabled", "2", ""])
def test_a_misspelt_boolean_is_an_error_not_false(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env({"PUBSUB_CLOSE_CLIENTS_ON_RECONNECT": value})
    message = str(raised.value)
    assert f"PUBSUB_CLOSE_CLIENTS_ON_RECONNECT={value!r} is invalid" in message
    assert "true, false" in message


def test_a_choice_error_names_the_variable_and_every_allowed_value() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env({"PUBSUB_SLOW_CLIENT_POLICY": "drop"})
    assert str(raised.value) == (
        "PUBSUB_SLOW_CLIENT_POLICY='drop' is invalid: "
        "allowed values are 'disconnect', 'drop_oldest'"
    )


def test_the_wire_format_error_lists_json_and_msgpack() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env({"PUBSUB_WIRE_FORMAT": "xml"})
    assert "PUBSUB_WIRE_FORMAT='xml'" in str(raised.value)
    assert "'json', 'msgpack'" in str(raised.value)


def test_a_keyword_error_names_the_field_not_a_variable() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings(inbound_rate_policy="ignore")  # type: ignore[arg-type]
    assert str(raised.value) == (
        "inbound_rate_policy='ignore' is invalid: allowed values are 'disconnect', 'drop', "
        "'throttle'"
    )


def test_an_override_error_names_the_field_even_when_the_variable_is_set() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env({"PUBSUB_SEND_QUEUE_SIZE": "8"}, send_queue_size=0)
    assert str(raised.value).startswith("send_queue_size=0 is invalid")


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("PUBSUB_HEARTBEAT_TTL", "soon", "must be a number"),
        ("PUBSUB_SEND_QUEUE_SIZE", "0", "must be positive"),
        ("PUBSUB_SEND_QUEUE_SIZE", "1.5", "must be a whole number"),
        ("PUBSUB_PROBE_INTERVAL", "-1", "must be 0 (off) or positive"),
        ("PUBSUB_INBOUND_BYTES_PER_SECOND", "-5", "must be 0 (off) or positive"),
        ("PUBSUB_KEY_PREFIX", "", "must not be empty"),
        ("PUBSUB_CHANNEL_ID_PATTERN", "[unclosed", "not a valid regular expression"),
        ("PUBSUB_HISTORY_CHANNELS", "(", "not a valid regular expression"),
        ("PUBSUB_RECONNECT_DELAY_MAX", "0.01", "at least the initial delay"),
        ("PUBSUB_ALLOWED_ORIGINS", "example.com", "not an origin"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_variable_and_why(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env({variable: value})
    assert str(raised.value).startswith(f"{variable}={value!r} is invalid: ")
    assert reason in str(raised.value)


def test_every_problem_is_reported_on_one_line() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env(
            {
                "PUBSUB_WIRE_FORMAT": "xml",
                "PUBSUB_CHANNEL_ID_PATTERN": "[",
                "PUBSUB_HISTORY_TTL": "x",
            }
        )
    message = str(raised.value)
    assert "\n" not in message
    for variable in ("PUBSUB_WIRE_FORMAT", "PUBSUB_CHANNEL_ID_PATTERN", "PUBSUB_HISTORY_TTL"):
        assert variable in message


@pytest.mark.parametrize(
    ("typo", "intended"),
    [
        ("PUBSUB_REDIS_URI", "PUBSUB_REDIS_URL"),
        ("PUBSUB_HEARTBEAT_TL", "PUBSUB_HEARTBEAT_TTL"),
        ("PUBSUB_SLOW_CLIENTS_POLICY", "PUBSUB_SLOW_CLIENT_POLICY"),
        ("PUBSUB_ALLOWED_ORIGIN", "PUBSUB_ALLOWED_ORIGINS"),
    ],
)
def test_a_typo_of_a_setting_is_an_error_naming_the_intended_variable(
    typo: str, intended: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PubSubSettings.from_env({typo: "1"})
    assert str(raised.value) == f"{typo} is not a setting: did you mean {intended}?"


def test_a_typo_in_the_dotenv_file_is_an_error_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PUBSUB_REDIS_URI=redis://x\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="did you mean PUBSUB_REDIS_URL"):
        PubSubSettings.from_env()


def test_an_unknown_variable_is_logged_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    # A name no other test uses: the once-per-process memory outlives this test.
    name = f"PUBSUB_ZZ_UNRELATED_{uuid.uuid4().hex.upper()}"
    with caplog.at_level(logging.WARNING, logger="fastapi_pubsub_cluster"):
        first = PubSubSettings.from_env({name: "1"})
        second = PubSubSettings.from_env({name: "1"})
    assert first == second == PubSubSettings()
    assert [record.getMessage() for record in caplog.records].count(
        f"ignoring {name}: fastapi-pubsub-cluster has no such setting"
    ) == 1


def test_demo_variables_are_neither_errors_nor_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastapi_pubsub_cluster"):
        settings = PubSubSettings.from_env({"PUBSUB_DEMO_CHANNEL": "lobby"})
    assert settings == PubSubSettings()
    assert caplog.records == []


def test_an_empty_redis_url_selects_memory() -> None:
    assert PubSubSettings.from_env({"PUBSUB_REDIS_URL": ""}).redis_url is None


def test_the_new_settings_have_their_documented_defaults() -> None:
    settings = PubSubSettings()
    assert settings.allowed_origins == ()
    assert settings.inbound_messages_per_second == 50.0
    assert settings.inbound_bytes_per_second == 1048576
    assert settings.inbound_rate_policy == "disconnect"
    assert settings.inbound_cooldown == 10.0


def test_allowed_origins_are_read_comma_separated_and_normalised() -> None:
    settings = PubSubSettings.from_env(
        {"PUBSUB_ALLOWED_ORIGINS": " https://App.example.com/ ,http://localhost:3000,"}
    )
    assert settings.allowed_origins == ("https://app.example.com", "http://localhost:3000")


def test_the_inbound_rate_settings_are_read_from_the_environment() -> None:
    settings = PubSubSettings.from_env(
        {
            "PUBSUB_INBOUND_MESSAGES_PER_SECOND": "0",
            "PUBSUB_INBOUND_BYTES_PER_SECOND": "2048",
            "PUBSUB_INBOUND_RATE_POLICY": "throttle",
            "PUBSUB_INBOUND_COOLDOWN": "2.5",
        }
    )
    assert settings.inbound_messages_per_second == 0
    assert settings.inbound_bytes_per_second == 2048
    assert settings.inbound_rate_policy == "throttle"
    assert settings.inbound_cooldown == 2.5


def test_the_repr_does_not_show_the_redis_password() -> None:
    settings = PubSubSettings(redis_url="redis://app:s3cret@cache:6379/0")
    assert "s3cret" not in repr(settings)
    assert settings.redis_url == "redis://app:s3cret@cache:6379/0"


def test_settings_are_immutable() -> None:
    settings = PubSubSettings()
    with pytest.raises((AttributeError, ValueError)):
        settings.key_prefix = "changed"  # type: ignore[misc]
    assert settings.key_prefix == "pubsub"


def test_with_changes_returns_a_validated_copy() -> None:
    original = PubSubSettings()
    changed = original.with_changes(send_queue_size=8)
    assert (original.send_queue_size, changed.send_queue_size) == (512, 8)
    with pytest.raises(ConfigurationError, match="send_queue_size=-1 is invalid"):
        original.with_changes(send_queue_size=-1)
    with pytest.raises(ConfigurationError, match="'no_such_field' is not a setting"):
        original.with_changes(no_such_field=1)


def test_has_history_follows_history_channels() -> None:
    settings = PubSubSettings(history_channels="news|orders:.*")
    assert settings.has_history("news")
    assert settings.has_history("orders:42")
    assert not settings.has_history("newsroom")
    assert not PubSubSettings().has_history("news")


def test_check_message_size_raises_over_the_limit() -> None:
    settings = PubSubSettings(max_message_bytes=10)
    settings.check_message_size(10)
    with pytest.raises(MessageTooLargeError):
        settings.check_message_size(11)


def test_stream_ids_are_validated() -> None:
    assert PubSubSettings.validate_stream_id("1764000000000-0") == "1764000000000-0"
    with pytest.raises(InvalidChannelError):
        PubSubSettings.validate_stream_id("$")


def test_a_configuration_error_stops_startup_with_one_line() -> None:
    script = (
        "from fastapi_pubsub_cluster.config_errors import exit_on_configuration_error\n"
        "from fastapi_pubsub_cluster.settings import PubSubSettings\n"
        "with exit_on_configuration_error():\n"
        "    PubSubSettings.from_env()\n"
    )
    env = {**os.environ, "PUBSUB_SLOW_CLIENT_POLICY": "drop"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert (
        "fastapi-pubsub-cluster: configuration error: PUBSUB_SLOW_CLIENT_POLICY='drop' is "
        "invalid: allowed values are 'disconnect', 'drop_oldest'"
    ) in done.stderr.splitlines()


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

    class OriginalStyle:  # the original package's class: plain attributes
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


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ({"a": 1}, "not a version-1 envelope array of 8 items"),
        ([1, "m", "c", "o", "r", 0, None], "not a version-1 envelope array of 8 items"),
        ([2, "m", "c", "o", "r", 0, None, 0.0], "not a version-1 envelope array of 8 items"),
        ([1, "z", "c", "o", "r", 0, None, 0.0], "unknown envelope kind 'z'"),
        ([1, 7, "c", "o", "r", 0, None, 0.0], "unknown envelope kind 7"),
        ([1, ["m"], "c", "o", "r", 0, None, 0.0], "unknown envelope kind ['m']"),
        ([1, "x", "c", "o", "r", 0, {"n": 1}, 0.0], "an excluding envelope's payload is not"),
        ([1, "y", "c", "o", "r", 0, [5, {"n": 1}], 0.0], "an excluding envelope's payload is not"),
        ([1, "m", 5, "o", "r", 0, None, 0.0], "envelope fields have the wrong types"),
        ([1, "m", "c", None, "r", 0, None, 0.0], "envelope fields have the wrong types"),
        ([1, "m", "c", "o", b"r", 0, None, 0.0], "envelope fields have the wrong types"),
        ([1, "m", "c", "o", "r", "0", None, 0.0], "envelope fields have the wrong types"),
        ([1, "m", "c", "o", "r", 0, None, "now"], "envelope timestamp is not a number"),
        ([1, "d", "", "o", "r", 0, "x", 0.0], "a direct envelope's payload is not"),
        ([1, "d", "", "o", "r", 0, [["a", 1], None], 0.0], "a direct envelope's payload is not"),
    ],
)
def test_each_malformed_envelope_gets_its_own_clear_error(items: object, error: str) -> None:
    with pytest.raises(MalformedMessageError) as raised:
        decode_envelope(msgpack.packb(items))
    assert str(raised.value).startswith(error)


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope(EventKind.MESSAGE, "room", "w", "id-1", 0, {"a": 1}, 1.5, exclude="conn-1"),
        Envelope(EventKind.STORED, "room", "w", "1-0", 0, [1, 2], 2.0, exclude="conn-2"),
        Envelope(EventKind.JOIN, "room", "w", "conn-1", 7, [True, '{"name":"a"}']),
        Envelope(EventKind.LEAVE, "room", "w", "conn-1", 8, False),
        Envelope(EventKind.DIRECT, "", "w", "id-2", 0, [["conn-1", "conn-2"], {"to": "you"}]),
    ],
)
def test_every_kind_of_envelope_round_trips(envelope: Envelope) -> None:
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_an_integer_timestamp_decodes_as_a_float() -> None:
    decoded = decode_envelope(msgpack.packb([1, "m", "c", "o", "r", 0, None, 3]))
    assert decoded.sent_at == 3.0 and isinstance(decoded.sent_at, float)


def test_payload_msgpack_cannot_hold_is_a_clear_error() -> None:
    with pytest.raises(MalformedMessageError):
        encode_envelope(Envelope(EventKind.MESSAGE, "c", "o", "r", 0, object()))
    with pytest.raises(MalformedMessageError):
        _ = OutgoingFrame({"nan": float("nan")}).text  # NaN has no JSON form
    # Bytes have none either: JSON clients get them base64-encoded.
    assert OutgoingFrame({"raw": b"\x00"}).text == '{"raw":{"$bytes":"AA=="}}'


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


def test_compression_is_a_setting_read_and_validated_like_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fastapi_pubsub_cluster"):
        assert PubSubSettings.from_env({"PUBSUB_COMPRESSION": "off"}).compression == "off"
        assert PubSubSettings.from_env({"PUBSUB_COMPRESSION": "Per-Socket"}).compression == (
            "per-socket"
        )
    assert caplog.records == []  # never "ignoring PUBSUB_COMPRESSION"
    assert PubSubSettings().compression == "shared"
    with pytest.raises(ConfigurationError) as refused:
        PubSubSettings.from_env({"PUBSUB_COMPRESSION": "bogus"})
    assert str(refused.value) == (
        "PUBSUB_COMPRESSION='bogus' is invalid: allowed values are 'shared', 'per-socket', 'off'"
    )
