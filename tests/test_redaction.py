"""Secrets in Redis URLs never reach logs, tracebacks or exception texts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback

import pytest

from fastapi_pubsub_cluster import PubSubError, PubSubHub
from fastapi_pubsub_cluster.redaction import redact_text, redact_url
from tests.conftest import make_settings
from tools.ports import free_port
from tools.processes import ROOT

SECRETS = ("s3cr3t", "pw")


def sentinel_url(port: int) -> str:
    return (
        f"redis+sentinel://user:pw@127.0.0.1:{port},127.0.0.1:{port}/mymaster/0"
        "?sentinel_password=s3cr3t&socket_timeout=1"
    )


def test_redact_url_masks_the_password_of_the_user_info() -> None:
    assert redact_url("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"


def test_redact_url_masks_a_password_without_user() -> None:
    assert redact_url("rediss://:hunter2@host/0") == "rediss://:***@host/0"


@pytest.mark.parametrize(
    "name", ["password", "sentinel_password", "token", "api_key", "client_secret", "passwd"]
)
def test_redact_url_masks_secret_query_parameters(name: str) -> None:
    redacted = redact_url(f"redis+sentinel://h:26379/m?{name}=hunter2&db=3")
    assert redacted == f"redis+sentinel://h:26379/m?{name}=***&db=3"


def test_redact_url_leaves_a_url_without_secrets_alone() -> None:
    url = "redis+cluster://h1:7000,h2:7001?socket_timeout=2"
    assert redact_url(url) == url


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = (
        "cannot reach redis://a:one@h1/0 nor 'rediss+sentinel://h2/m?sentinel_password=two' "
        "nor unix://:three@/tmp/r.sock?password=four"
    )
    redacted = redact_text(text)
    for secret in ("one", "two", "three", "four"):
        assert f"{secret}@" not in redacted and f"={secret}" not in redacted
    assert "redis://a:***@h1/0" in redacted


async def test_hub_start_with_unreachable_sentinel_hides_its_secrets(
    key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = PubSubHub(settings=make_settings(key_prefix, sentinel_url(free_port())))
    with pytest.raises(PubSubError) as failure:
        await hub.start()
    written = "".join(traceback.format_exception(failure.value)) + caplog.text
    assert "mymaster" in written or "127.0.0.1" in written  # it does say what failed
    for secret in SECRETS:
        assert f":{secret}@" not in written and f"={secret}" not in written


def test_uvicorn_worker_with_unreachable_sentinel_hides_its_secrets() -> None:
    env = {**os.environ, "PUBSUB_REDIS_URL": sentinel_url(free_port()), "PUBSUB_REDIS_TIMEOUT": "1"}
    command = [sys.executable, "-m", "uvicorn", "examples.chat:app", "--port", str(free_port())]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output  # startup fails: Redis unreachable
    assert "Traceback" in output or "ERROR" in output
    for secret in SECRETS:
        assert f":{secret}@" not in output and f"={secret}" not in output
