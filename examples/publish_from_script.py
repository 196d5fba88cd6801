"""Publish to the clients of a running cluster from a plain script: no web app, only Redis.

    PUBSUB_REDIS_URL=redis://localhost:6379/0 python examples/publish_from_script.py "hello"

Every client of the channel gets the message, whichever worker it is connected to. The
message has the demo's chat shape, so it shows up in the chat of
``python -m fastapi_pubsub_cluster.demo --redis-url ...``. Use the same ``PUBSUB_KEY_PREFIX``
as the app (the default is ``pubsub``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from fastapi_pubsub_cluster import PubSubError, RedisPublisher, publish_sync


def chat_line(name: str, text: str) -> dict[str, Any]:
    """A message in the shape the demo page shows (``worker`` None: not from a worker)."""
    return {"type": "chat", "name": name, "text": text, "worker": None}


async def publish_with_asyncio(redis_url: str, channel: str, payload: dict[str, Any]) -> int:
    """From async code (a worker queue consumer, an async job): one client for many messages."""
    async with RedisPublisher(redis_url) as publisher:
        return await publisher.publish(channel, payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="the message")
    parser.add_argument("--channel", default="lobby")
    parser.add_argument("--name", default="script", help="sender shown in the chat")
    parser.add_argument(
        "--redis-url", default=os.environ.get("PUBSUB_REDIS_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--sync", action="store_true", help="use publish_sync (no event loop)")
    arguments = parser.parse_args()
    payload = chat_line(arguments.name, arguments.text)
    try:
        if arguments.sync:
            workers = publish_sync(arguments.redis_url, arguments.channel, payload)
        else:
            workers = asyncio.run(
                publish_with_asyncio(arguments.redis_url, arguments.channel, payload)
            )
    except PubSubError as exc:
        print(f"not published: {exc}", file=sys.stderr)
        return 1
    print(f"published to {arguments.channel!r}; {workers} worker(s) listening")
    return 0


if __name__ == "__main__":
    sys.exit(main())
