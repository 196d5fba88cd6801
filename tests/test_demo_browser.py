"""The demo page in real headless Chromium, two pages on two worker processes sharing Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.browser import chromium, requires_chromium
from tools.processes import uvicorn_process

DEMO_APP = "fastapi_pubsub_cluster.demo.asgi:app"

pytestmark = [pytest.mark.slow, requires_chromium]


@pytest.fixture
def two_demo_workers(
    redis_url: str, key_prefix: str, redis_client: object
) -> Iterator[tuple[str, str]]:
    """Two uvicorn processes of the demo app, one Redis and key prefix between them."""
    env = {"PUBSUB_REDIS_URL": redis_url, "PUBSUB_KEY_PREFIX": key_prefix}
    with uvicorn_process(DEMO_APP, env) as a, uvicorn_process(DEMO_APP, env) as b:
        yield a, b


async def worker_pid(base: str) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return int((await http.get(f"{base}/healthz")).json()["pid"])


async def send_chat(page: Page, name: str, text: str) -> None:
    await page.fill("#name", name)
    await page.fill("#message", text)
    await page.click("#send")


async def test_pages_on_two_workers_see_each_other_and_chat(
    two_demo_workers: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two_demo_workers
    pid_a, pid_b = await worker_pid(a), await worker_pid(b)
    async with chromium() as browser:
        page_a = await browser.new_page(viewport={"width": 960, "height": 620})
        page_b = await browser.new_page(viewport={"width": 960, "height": 620})
        await page_a.goto(f"{a}/?name=ada")
        await page_b.goto(f"{b}/?name=bob")
        for page, pid in ((page_a, pid_a), (page_b, pid_b)):
            await expect(page.locator("#count")).to_have_text("2", timeout=10_000)
            await expect(page.locator("#worker")).to_have_text(str(pid))
            await expect(page.locator("#send")).to_be_enabled()

        await send_chat(page_b, "bob", "hello from worker b")
        line = page_a.locator("#log li.chat", has_text="hello from worker b")
        await expect(line).to_have_count(1, timeout=10_000)
        await expect(line).to_contain_text(f"via worker {pid_b}")
        await expect(line.locator(".via.other")).to_have_count(1)  # marked as cross-worker

        await send_chat(page_a, "ada", "hi bob, from worker a")
        await expect(
            page_b.locator("#log li.chat", has_text="hi bob, from worker a")
        ).to_contain_text(f"via worker {pid_a}", timeout=10_000)

        # The names the pages gave are their presence, listed under the count.
        for page in (page_a, page_b):
            await expect(page.locator("#members")).to_have_text("ada, bob")

        # A second room, joined with pubsub.js on the same socket: its count and chat.
        await page_a.fill("#room-input", "side")
        await page_a.click("#room-join")
        await expect(page_a.locator("#room-count")).to_have_text("1", timeout=10_000)
        page_c = await browser.new_page()
        await page_c.goto(f"{b}/?channel=side&name=cyd")
        await expect(page_a.locator("#room-count")).to_have_text("2", timeout=10_000)
        await expect(page_c.locator("#send")).to_be_enabled()
        await send_chat(page_c, "cyd", "hello side room")
        await expect(page_a.locator("#log li.chat", has_text="hello side room")).to_contain_text(
            "[side] cyd:", timeout=10_000
        )
        await page_c.close()
        await page_a.click("#room-join")  # now "Leave"
        await expect(page_a.locator("#room-join")).to_have_text("Join")
        await expect(page_a.locator("#log li.system", has_text="left side")).to_have_count(1)

        await page_a.screenshot(path=str(tmp_path / "demo-worker-a.png"), full_page=True)
        await page_b.close()
        await expect(page_a.locator("#count")).to_have_text("1", timeout=10_000)
    assert (tmp_path / "demo-worker-a.png").stat().st_size > 0
