"""The demo app, its command line, and the examples that ship beside it, run for real."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest

from fastapi_pubsub_cluster.demo import create_app
from fastapi_pubsub_cluster.demo.app import chat_line_from
from tests.conftest import make_settings
from tests.live import connect, recv_until, serve
from tools.ports import free_port
from tools.processes import ROOT, running, uvicorn_process


@pytest.fixture
async def demo_server(key_prefix: str) -> AsyncIterator[str]:
    """The demo app, in memory, under uvicorn in this process; yields its ``ws://`` base."""
    async with serve(create_app(settings=make_settings(key_prefix))) as url:
        yield url


@pytest.fixture
def redis_env(redis_url: str, key_prefix: str, redis_client: object) -> dict[str, str]:
    """Environment that points a process at the test's Redis and key prefix."""
    return {"PUBSUB_REDIS_URL": redis_url, "PUBSUB_KEY_PREFIX": key_prefix}


@contextmanager
def demo_cli(*arguments: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python -m fastapi_pubsub_cluster.demo`` on a free port; yields its ``http://`` base."""
    port = free_port()
    command = [sys.executable, "-m", "fastapi_pubsub_cluster.demo", "--port", str(port)]
    command += [*arguments, "--log-level", "warning"]
    with running(command, f"http://127.0.0.1:{port}", env) as base:
        yield base


# -- the app ---------------------------------------------------------------------------


async def test_two_clients_of_the_demo_see_each_other_in_the_count(demo_server: str) -> None:
    first = await connect(f"{demo_server}/ws/lobby")
    await recv_until(first, lambda m: m.get("count") == 1)
    second = await connect(f"{demo_server}/ws/lobby")
    for ws in (first, second):
        message = await recv_until(ws, lambda m: m.get("count") == 2)
        assert message == {
            "type": "presence",
            "channel": "lobby",
            "count": 2,
            "worker": os.getpid(),
        }
    await second.close()
    await recv_until(first, lambda m: m.get("count") == 1)
    await first.close()


async def test_a_chat_line_reaches_every_client_of_the_channel(demo_server: str) -> None:
    alice = await connect(f"{demo_server}/ws/lobby")
    bob = await connect(f"{demo_server}/ws/lobby")
    for ws in (alice, bob):
        await recv_until(ws, lambda m: m.get("count") == 2)
    await alice.send('{"type": "chat", "name": "alice", "text": "  hello bob  "}')
    for ws in (alice, bob):
        line = await recv_until(ws, lambda m: m.get("type") == "chat")
        assert line == {"type": "chat", "name": "alice", "text": "hello bob", "worker": os.getpid()}
    await alice.close()
    await bob.close()


def test_only_non_empty_chat_messages_count_as_chat_lines() -> None:
    assert chat_line_from({"type": "chat", "text": "hi"}) == {
        "type": "chat",
        "name": "anonymous",
        "text": "hi",
    }
    assert chat_line_from({"type": "chat", "text": "   "}) is None
    assert chat_line_from({"type": "other", "text": "hi"}) is None
    assert chat_line_from(["chat", "hi"]) is None


# -- the command line --------------------------------------------------------------------


def test_demo_command_serves_the_page() -> None:
    with demo_cli() as base:
        response = httpx.get(f"{base}/", timeout=5)
        script = httpx.get(f"{base}/pubsub.js", timeout=5)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'import { PubSubClient } from "/pubsub.js";' in response.text
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "<title>fastapi-pubsub-cluster demo</title>" in response.text
    assert 'content="lobby"' in response.text
    assert "backend: in-memory" in response.text


def test_demo_command_refuses_several_workers_without_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastapi_pubsub_cluster.demo", "--workers", "2"],
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if key != "PUBSUB_REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--redis-url" in result.stderr


@pytest.mark.slow
async def test_demo_command_with_redis_counts_clients_of_all_its_workers(
    redis_url: str, key_prefix: str, redis_client: object
) -> None:
    env = {"PUBSUB_KEY_PREFIX": key_prefix}
    with demo_cli("--redis-url", redis_url, "--workers", "2", "--channel", "hall", env=env) as base:
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{base}/healthz")).json()["backend"] == "redis"
            assert 'content="hall"' in (await http.get(f"{base}/")).text
        ws_base = base.replace("http://", "ws://")
        clients = [await connect(f"{ws_base}/ws/hall") for _ in range(4)]
        for ws in clients:
            await recv_until(ws, lambda m: m.get("count") == 4)
        for ws in clients:
            await ws.close()


# -- the examples ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_publish_from_script_reaches_the_demo_clients(
    redis_env: dict[str, str], redis_url: str, key_prefix: str, mode: str
) -> None:
    settings = make_settings(key_prefix, redis_url)
    async with serve(create_app(settings=settings)) as server:
        client = await connect(f"{server}/ws/news")
        await recv_until(client, lambda m: m.get("count") == 1)
        script = os.path.join(ROOT, "examples", "publish_from_script.py")
        command = [sys.executable, script, "--channel", "news", "--name", "cron"]
        command += ["--sync"] if mode == "sync" else []
        script_run = await asyncio.create_subprocess_exec(
            *command,
            "extra edition",
            cwd=ROOT,
            env={**os.environ, **redis_env, "PYTHONPATH": ROOT},  # works uninstalled too
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(script_run.communicate(), 30)
        assert script_run.returncode == 0, stderr.decode()
        line = await recv_until(client, lambda m: m.get("type") == "chat")
        assert line == {"type": "chat", "name": "cron", "text": "extra edition", "worker": None}
        await client.close()


@pytest.mark.slow
async def test_gunicorn_config_runs_the_demo_with_two_uvicorn_workers(
    redis_env: dict[str, str],
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn.conf.py"]
    command += ["fastapi_pubsub_cluster.demo.asgi:app"]
    env = {**redis_env, "WEB_CONCURRENCY": "2", "BIND": f"127.0.0.1:{port}"}
    with running(command, f"http://127.0.0.1:{port}", env) as base:
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{base}/healthz")).json()["backend"] == "redis"
        clients = [await connect(f"ws://127.0.0.1:{port}/ws/lobby") for _ in range(3)]
        for ws in clients:
            await recv_until(ws, lambda m: m.get("count") == 3)
        for ws in clients:
            await ws.close()


@pytest.mark.slow
async def test_chat_example_relays_a_line_to_the_room_with_the_sender_name(
    redis_env: dict[str, str],
) -> None:
    with uvicorn_process("examples.chat:app", redis_env) as base:
        ws_base = base.replace("http://", "ws://")
        alice = await connect(f"{ws_base}/ws/room1?name=alice")
        bob = await connect(f"{ws_base}/ws/room1?name=bob")
        for ws in (alice, bob):
            await recv_until(ws, lambda m: m == {"online": 2})
        await alice.send('{"text": "hi all"}')
        for ws in (alice, bob):
            assert await recv_until(ws, lambda m: "from" in m) == {
                "from": "alice",
                "text": "hi all",
            }
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.post(f"{base}/rooms/room1/announce", json={"text": "closing"})
        assert response.json() == {"online": 2}
        assert await recv_until(bob, lambda m: m.get("from") == "announcer") == {
            "from": "announcer",
            "text": "closing",
        }
        for ws in (alice, bob):
            await ws.close()
