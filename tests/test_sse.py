"""Server-sent event streams across two real uvicorn workers on real Redis, read by httpx
and by Chromium's EventSource."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from fastapi_pubsub_cluster.envelope import stream_id_order
from tests.browser import chromium, requires_chromium
from tests.live import wait_for_async_condition
from tools.ports import free_port
from tools.processes import has_workers, started, uvicorn_command

APP = "tests.apps.sse_app:app"
TOKEN = "token=let-me-in"
pytestmark = pytest.mark.slow


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Stream:
    """Events of one SSE response as they arrive."""

    lines: AsyncIterator[str]
    last_id: str | None = None
    seen: list[Event] = field(default_factory=list)

    async def next(self, timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            event = Event()
            async for line in self.lines:
                if not line:
                    if event.data or event.event != "message":
                        self.seen.append(event)
                        if event.id is not None:
                            self.last_id = event.id
                        return event
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event.event = value
                elif name == "data":
                    event.data = value if not event.data else f"{event.data}\n{value}"
                elif name == "id":
                    event.id = value
            raise EOFError("the stream ended")

    async def messages(self, count: int) -> list[Any]:
        return [(await self.next()).json for _ in range(count)]


@contextlib.asynccontextmanager
async def stream(
    base: str, channels: list[str], last_event_id: str | None = None
) -> AsyncIterator[Stream]:
    query = "&".join([TOKEN, *(f"channel={c}" for c in channels)])
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http,
        http.stream("GET", f"{base}/events?{query}", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Stream(response.aiter_lines())
        welcome = await events.next()
        assert welcome.event == "welcome"
        yield events


async def publish(base: str, channel: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base}/publish/{channel}", json=body)
        assert response.status_code == 200


@contextlib.contextmanager
def worker(env: dict[str, str], port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    with started(uvicorn_command(APP, port), f"{base}/healthz", env=env, ready=has_workers(1)):
        yield base


@pytest.fixture
def env(redis_url: str, key_prefix: str, redis_client: aioredis.Redis) -> dict[str, str]:
    return {
        "PUBSUB_REDIS_URL": redis_url,
        "PUBSUB_KEY_PREFIX": key_prefix,
        "PUBSUB_HISTORY_CHANNELS": "hist.*",
        "PUBSUB_SEND_QUEUE_SIZE": "16",
        "PUBSUB_CLOSE_TIMEOUT": "2",
    }


async def listeners(client: aioredis.Redis, key_prefix: str, channel: str) -> int:
    """How many Redis connections listen to ``channel``'s topic (the workers' links)."""
    counts = await client.pubsub_numsub(f"{key_prefix}:{{{channel}}}:topic")
    return int(counts[0][1])


async def test_a_stream_receives_what_either_worker_publishes(env: dict[str, str]) -> None:
    with worker(env) as a, worker(env) as b:
        async with stream(a, ["news", "hist.1"]) as events:
            await publish(b, "news", {"headline": "from b"})
            await publish(a, "hist.1", {"n": 1})
            first, second = await events.next(), await events.next()
            assert first.json == {"channel": "news", "data": {"headline": "from b"}}
            assert first.id is None  # plain channels carry no position
            assert second.json["channel"] == "hist.1"
            assert second.json["data"] == {"n": 1}
            assert second.id == second.json["id"]


async def test_a_stream_resumes_after_its_worker_restarts_with_exactly_the_missed_messages(
    env: dict[str, str],
) -> None:
    port = free_port()
    with worker(env) as b:
        with worker(env, port) as a:
            async with stream(a, ["hist.r"]) as events:
                await publish(b, "hist.r", {"n": 1})
                await publish(b, "hist.r", {"n": 2})
                assert [m["data"] for m in await events.messages(2)] == [{"n": 1}, {"n": 2}]
                last_id = events.last_id
        # Worker a is gone: what is published now, its client missed.
        for n in range(3, 6):
            await publish(b, "hist.r", {"n": n})
        with worker(env, port) as a:
            async with stream(a, ["hist.r"], last_event_id=last_id) as events:
                missed = await events.messages(3)
                assert [m["data"] for m in missed] == [{"n": 3}, {"n": 4}, {"n": 5}]
                await publish(b, "hist.r", {"n": 6})
                (live,) = await events.messages(1)
                assert live["data"] == {"n": 6}
                assert stream_id_order(live["id"]) > stream_id_order(missed[-1]["id"])
                assert events.last_id == live["id"]


async def test_a_denied_request_gets_403_and_registers_nothing(
    env: dict[str, str], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    with worker(env) as a:
        async with httpx.AsyncClient() as http:
            denied = await http.get(f"{a}/events?channel=guarded")
            assert denied.status_code == 403
            secret = await http.get(f"{a}/events?{TOKEN}&channel=news&channel=secret")
            assert secret.status_code == 403
        assert await listeners(redis_client, key_prefix, "guarded") == 0
        assert await listeners(redis_client, key_prefix, "news") == 0
        async with stream(a, ["guarded"]):  # the same channel, authorized: it is heard
            assert await listeners(redis_client, key_prefix, "guarded") == 1


async def test_an_invalid_channel_or_resume_position_gets_400(env: dict[str, str]) -> None:
    with worker(env) as a:
        async with httpx.AsyncClient() as http:
            bad = await http.get(f"{a}/events?{TOKEN}&channel=no%20spaces!")
            assert bad.status_code == 400
            assert "channel" in bad.json()["detail"]
            none = await http.get(f"{a}/events?{TOKEN}&channel=")
            assert none.status_code == 400
            position = await http.get(
                f"{a}/events?{TOKEN}&channel=hist.1", headers={"Last-Event-ID": "tomorrow"}
            )
            assert position.status_code == 400


async def test_a_client_that_stops_reading_is_dropped(
    env: dict[str, str], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    with worker(env) as a:
        host, port = a.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = f"GET /events?{TOKEN}&channel=flood HTTP/1.1\r\nHost: {host}\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        await reader.readuntil(b"event: welcome")  # then it reads nothing more
        assert await listeners(redis_client, key_prefix, "flood") == 1
        big = {"blob": "x" * 200_000}
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                await http.post(f"{a}/publish/flood", json=big)

        async def dropped() -> bool:
            return await listeners(redis_client, key_prefix, "flood") == 0

        await wait_for_async_condition(dropped, timeout=15)
        writer.close()


@requires_chromium
async def test_chromium_eventsource_reconnects_to_a_restarted_worker_and_resumes(
    env: dict[str, str],
) -> None:
    port = free_port()
    with worker(env) as b:
        async with chromium() as browser:
            with worker(env, port) as a:
                page = await browser.new_page()
                await page.goto(f"{a}/")
                await page.evaluate(
                    """(url) => {
                      window.got = []; window.opened = 0;
                      const source = new EventSource(url);
                      source.addEventListener("welcome", () => { window.opened += 1; });
                      source.onmessage = (e) => window.got.push(JSON.parse(e.data));
                    }""",
                    f"/events?{TOKEN}&channel=hist.b&channel=news",
                )
                await page.wait_for_function("() => window.opened === 1", timeout=10_000)
                await publish(b, "news", {"plain": 1})
                await publish(b, "hist.b", {"n": 1})
                await page.wait_for_function("() => window.got.length === 2", timeout=10_000)
            for n in (2, 3):  # while no worker serves the page's stream
                await publish(b, "hist.b", {"n": n})
            with worker(env, port):
                await page.wait_for_function("() => window.opened === 2", timeout=20_000)
                await page.wait_for_function("() => window.got.length === 4", timeout=10_000)
                got = await page.evaluate("() => window.got")
        assert got[0] == {"channel": "news", "data": {"plain": 1}}
        assert [m["data"] for m in got[1:]] == [{"n": 1}, {"n": 2}, {"n": 3}]
