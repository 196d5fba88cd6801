"""Headless Debian Chromium for the browser tests, and pages that drive ``pubsub.js``."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

requires_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: apt-get install chromium (CI installs it)",
)

#: Every event a PubSubClient emits; the recorder keeps them all in ``window.events``.
CLIENT_EVENTS = ["open", "close", "message", "presence", "direct", "joined", "left"]
CLIENT_EVENTS += ["refused", "gap"]

_START_CLIENT = """
({ url, options }) => {
  const client = new window.pubsub.PubSubClient(url, options);
  window.client = client;
  window.events = [];
  window.pids = [];
  for (const name of EVENTS) {
    client.on(name, (payload) => window.events.push({ name, payload }));
  }
  client.on("direct", (data) => { if (data && data.pid) window.pids.push(data.pid); });
}
""".replace("EVENTS", json.dumps(CLIENT_EVENTS))


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Debian Chromium, closed after."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGUMENTS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def client_page(browser: Browser, base: str, path: str, **options: Any) -> Page:
    """A page of the client test app (``tests/apps/client_app.py``) at ``base``, with a
    ``PubSubClient`` of ``path`` (``/ws/<channel>...``) as ``window.client`` and every event
    it emits recorded in ``window.events`` (and the pids its worker told in ``window.pids``)."""
    page = await browser.new_page()
    await page.goto(f"{base}/")
    await page.wait_for_function("() => window.pubsub !== undefined", timeout=10_000)
    await page.evaluate(_START_CLIENT, {"url": path, "options": options})
    return page


async def events(page: Page, name: str) -> list[Any]:
    """The payloads of the ``name`` events the page's client emitted so far."""
    return list(
        await page.evaluate(
            "(name) => window.events.filter((e) => e.name === name).map((e) => e.payload)", name
        )
    )


async def wait_for_event(page: Page, name: str, condition: str = "true", count: int = 1) -> None:
    """Wait until the client emitted ``count`` ``name`` events whose payload ``p`` satisfies
    the JavaScript expression ``condition``."""
    await page.wait_for_function(
        f"""([name, count]) => window.events.filter(
            (e) => e.name === name && ((p) => ({condition}))(e.payload)).length >= count""",
        arg=[name, count],
        timeout=15_000,
    )
