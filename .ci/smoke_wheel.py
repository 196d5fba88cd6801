"""Run inside a fresh venv holding only the wheel (no extras): the default install works.

Imports every module of the core (all but the server integrations that need an extra),
then starts an in-memory hub, publishes and stops it; with REDIS_URL set, the same on Redis.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import sys
import uuid

import fastapi_pubsub_cluster
from fastapi_pubsub_cluster import PubSubHub, PubSubSettings

# Modules that need an extra by design: the uvicorn protocol ([uvicorn]), the gunicorn
# worker class ([gunicorn]) and the Python client ([client]; the package and its modules).
NEEDS_AN_EXTRA = (
    "fastapi_pubsub_cluster.servers.uvicorn_ws",
    "fastapi_pubsub_cluster.servers.gunicorn_worker",
    "fastapi_pubsub_cluster.remote",
)


def import_the_core() -> None:
    prefix = fastapi_pubsub_cluster.__name__ + "."
    for module in pkgutil.walk_packages(fastapi_pubsub_cluster.__path__, prefix):
        if not module.name.startswith(NEEDS_AN_EXTRA):
            importlib.import_module(module.name)


def the_client_says_which_extra_it_needs() -> None:
    try:
        importlib.import_module("fastapi_pubsub_cluster.remote")
    except ImportError as exc:
        assert "[client]" in str(exc), exc


async def publish_once(settings: PubSubSettings) -> None:
    async with PubSubHub(settings=settings) as hub:
        await hub.publish("smoke", {"hello": "world"})


def main() -> int:
    assert "site-packages" in fastapi_pubsub_cluster.__file__, fastapi_pubsub_cluster.__file__
    import_the_core()
    the_client_says_which_extra_it_needs()
    from fastapi_pubsub_cluster.client_script import client_script, client_types

    assert b"export class PubSubClient" in client_script(), "the wheel lacks static/pubsub.js"
    assert b"export class PubSubClient" in client_types(), "the wheel lacks static/pubsub.d.ts"
    asyncio.run(publish_once(PubSubSettings()))
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        prefix = f"smoke-{uuid.uuid4().hex[:12]}"
        asyncio.run(publish_once(PubSubSettings(redis_url=redis_url, key_prefix=prefix)))
    print(f"wheel smoke test passed ({'memory and Redis' if redis_url else 'memory'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
