"""Finding the hub of a socket or request that names none: the app's, or, as in the
original fastapi-pubsub package, one made on first use per event loop and Redis URL."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from ..backends.redis import RedisCredentialsLike, redis_url_from
from ..errors import ConfigurationError
from ..hub import APP_STATE_ATTRIBUTE, PubSubHub, created_hubs, forget_created
from ..redaction import redact_url


def hub_for(scope: Mapping[str, Any]) -> PubSubHub | None:
    """The hub a socket or request with this ASGI ``scope`` uses when it names none.

    In order: the hub ``hub.lifespan`` stored on ``app.state``; the hub whose
    ``lifespan`` the app was given (even where it did not run: TestClient without
    ``with``); the hub in FastAPI's lifespan state (``yield {"pubsub_hub": hub}``); the
    only running hub the application created; the only one that never ran. None if it
    created none. Raises :class:`ConfigurationError` if several qualify and nothing says
    which one.
    """
    app = scope.get("app")
    hub = getattr(getattr(app, "state", None), APP_STATE_ATTRIBUTE, None)
    if isinstance(hub, PubSubHub):
        return hub
    lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
    hub = getattr(lifespan, "__self__", None)
    if isinstance(hub, PubSubHub):
        return hub
    hub = (scope.get("state") or {}).get(APP_STATE_ATTRIBUTE)
    if isinstance(hub, PubSubHub):
        return hub
    # Running hubs first: a hub entered in the app's own lifespan runs before any socket.
    # Then those that never ran; one that ran and stopped belonged to an app of its own.
    for running in (True, False):
        hubs = [h for h in created_hubs() if (h.started if running else not h.has_run)]
        if len(hubs) > 1:
            raise ConfigurationError(
                f"{len(hubs)} PubSubHub objects exist and this socket names none: pass "
                "hub=..., or give the app's hub its lifespan (FastAPI(lifespan=hub.lifespan))"
            )
        if hubs:
            return hubs[0]
    return None


def current_hub(connection: HTTPConnection) -> PubSubHub:
    """The app's hub, as a FastAPI dependency: ``hub: PubSubHub = Depends(current_hub)``."""
    hub = hub_for(connection.scope)
    if hub is None:
        raise ConfigurationError("no PubSubHub: create one and give it the app's lifespan")
    return hub


def hub_for_socket(
    scope: Mapping[str, Any], redis_credentials: RedisCredentialsLike | None
) -> PubSubHub:
    """The hub of a socket that names none: :func:`hub_for`, or as the original package did (a
    hub per Redis URL in ``redis_credentials``, made on first use; in memory without them)."""
    app_hub = hub_for(scope)
    if redis_credentials is None:
        return app_hub if app_hub is not None else implicit_hub(None)
    url = redis_url_from(redis_credentials)
    if app_hub is None:
        return implicit_hub(url)  # a hub per Redis, made on first use
    if app_hub.settings.redis_url != url:
        # Publishing through the app's hub would never reach these sockets.
        raise ConfigurationError(
            f"this socket's redis_credentials ({redact_url(url)}) name another Redis than the "
            f"app's PubSubHub ({redact_url(app_hub.settings.redis_url or 'in memory')}): "
            "pass hub=... or drop redis_credentials"
        )
    return app_hub


# Hubs made implicitly for sockets that name none (no hub passed, no lifespan),
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
