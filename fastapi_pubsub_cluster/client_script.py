"""Serving the browser client, ``pubsub.js``, and its TypeScript declarations,
``pubsub.d.ts``, from the app itself."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

#: The client's media type (RFC 9239).
MEDIA_TYPE = "text/javascript; charset=utf-8"
#: The declarations' media type (none is registered; Deno and bundlers read this one).
TYPES_MEDIA_TYPE = "application/typescript; charset=utf-8"


@cache
def client_script() -> bytes:
    """The source of ``pubsub.js``, the browser client this package ships."""
    return _static("pubsub.js")


@cache
def client_types() -> bytes:
    """``pubsub.d.ts``: the TypeScript declarations of ``pubsub.js``."""
    return _static("pubsub.d.ts")


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def client_script_route(path: str = "/pubsub.js", *, max_age: int = 3600) -> APIRouter:
    """A router serving ``pubsub.js`` at ``path``, and its TypeScript declarations beside it
    (``pubsub.d.ts`` for ``/pubsub.js``), for ``app.include_router(...)``::

        app.include_router(client_script_route())
        # in the page: import { PubSubClient } from "/pubsub.js";

    Browsers may keep them ``max_age`` seconds, then revalidate them by their ETag (they
    change only with the package version). The script's ``X-TypeScript-Types`` header names
    the declarations, for tools that import modules by URL (Deno).
    """
    types_path = path.removesuffix(".js") + ".d.ts"
    router = APIRouter()
    _serve(router, path, client_script(), MEDIA_TYPE, max_age, {"X-TypeScript-Types": types_path})
    _serve(router, types_path, client_types(), TYPES_MEDIA_TYPE, max_age, {})
    return router


def _serve(
    router: APIRouter,
    path: str,
    body: bytes,
    media_type: str,
    max_age: int,
    extra: dict[str, str],
) -> None:
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag, **extra}

    async def static_file(request: Request) -> Response:
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    router.add_api_route(path, static_file, methods=["GET", "HEAD"], include_in_schema=False)
