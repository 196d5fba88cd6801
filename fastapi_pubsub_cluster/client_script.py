"""Serving the browser client, ``pubsub.js``, from the app itself."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

#: The client's media type (RFC 9239).
MEDIA_TYPE = "text/javascript; charset=utf-8"


@cache
def client_script() -> bytes:
    """The source of ``pubsub.js``, the browser client this package ships."""
    return resources.files(__package__).joinpath("static", "pubsub.js").read_bytes()


def client_script_route(path: str = "/pubsub.js", *, max_age: int = 3600) -> APIRouter:
    """A router serving ``pubsub.js`` at ``path``, for ``app.include_router(...)``::

        app.include_router(client_script_route())
        # in the page: import { PubSubClient } from "/pubsub.js";

    Browsers may keep it ``max_age`` seconds, then revalidate it by its ETag (it changes
    only with the package version).
    """
    body = client_script()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag}
    router = APIRouter()

    @router.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)
    async def pubsub_js(request: Request) -> Response:
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=MEDIA_TYPE, headers=headers)

    return router
