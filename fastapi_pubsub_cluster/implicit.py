"""Hubs of sockets that name none: the app's (see :func:`~fastapi_pubsub_cluster.hub.hub_for`),
or, the seed's way, one made on first use per event loop and Redis URL."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any

from .backends.redis import RedisCredentialsLike, redis_url_from
from .errors import ConfigurationError
from .hub import PubSubHub, forget_created, hub_for
from .redaction import redact_url


def hub_for_socket(
    scope: Mapping[str, Any], redis_credentials: RedisCredentialsLike | None
) -> PubSubHub:
    """The hub of a socket that names none: :func:`hub_for`, or the seed's way (a hub per
    Redis URL in ``redis_credentials``, made on first use; in memory without them)."""
    app_hub = hub_for(scope)
    if redis_credentials is None:
        return app_hub if app_hub is not None else implicit_hub(None)
    url = redis_url_from(redis_credentials)
    if app_hub is None:
        return implicit_hub(url)  # the seed's way: a hub per Redis, made on first use
    if app_hub.settings.redis_url != url:
        # Publishing through the app's hub would never reach these sockets.
        raise ConfigurationError(
            f"this socket's redis_credentials ({redact_url(url)}) name another Redis than the "
            f"app's PubSubHub ({redact_url(app_hub.settings.redis_url or 'in memory')}): "
            "pass hub=... or drop redis_credentials"
        )
    return app_hub


# Hubs made implicitly for sockets built the seed's way (no hub passed, no lifespan),
# one per event loop and Redis URL.
_implicit_hubs: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str | None, PubSubHub]
] = weakref.WeakKeyDictionary()


def implicit_hub(redis_url: str | None) -> PubSubHub:
    """The shared hub for ``redis_url`` (None: in memory) in the running event loop."""
    loop = asyncio.get_running_loop()
    hubs = _implicit_hubs.setdefault(loop, {})
    hub = hubs.get(redis_url)
    if hub is None:
        hub = PubSubHub(redis_url)
        forget_created(hub)  # the library's, not the application's
        hubs[redis_url] = hub
    return hub


async def close_implicit_hubs() -> None:
    """Stop the hubs made for sockets built without a hub (call it on shutdown)."""
    loop = asyncio.get_running_loop()
    hubs = _implicit_hubs.pop(loop, {})
    for hub in hubs.values():
        await hub.stop()
