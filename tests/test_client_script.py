"""The browser client is served from the app: the file itself, as JavaScript, cacheable."""

from __future__ import annotations

from importlib import resources

import httpx
from fastapi import FastAPI

from fastapi_pubsub_cluster import client_script_route
from tests.live import serve

SHIPPED = resources.files("fastapi_pubsub_cluster").joinpath("static", "pubsub.js").read_bytes()


async def test_the_route_serves_the_shipped_file_as_javascript_with_a_cache_header() -> None:
    app = FastAPI()
    app.include_router(client_script_route())
    app.include_router(client_script_route("/static/client.js", max_age=60))
    async with serve(app) as url, httpx.AsyncClient(base_url=url.replace("ws", "http")) as http:
        response = await http.get("/pubsub.js")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.content == SHIPPED
        assert b"export class PubSubClient" in response.content
        assert response.headers["cache-control"] == "public, max-age=3600"

        # Revalidation by ETag costs no body.
        etag = response.headers["etag"]
        again = await http.get("/pubsub.js", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""

        head = await http.head("/pubsub.js")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/javascript")

        other = await http.get("/static/client.js")
        assert other.content == SHIPPED
        assert other.headers["cache-control"] == "public, max-age=60"
        assert other.headers["etag"] == etag


TYPES = resources.files("fastapi_pubsub_cluster").joinpath("static", "pubsub.d.ts").read_bytes()


async def test_the_typescript_declarations_are_served_beside_the_script() -> None:
    app = FastAPI()
    app.include_router(client_script_route())
    app.include_router(client_script_route("/static/client.js", max_age=60))
    async with serve(app) as url, httpx.AsyncClient(base_url=url.replace("ws", "http")) as http:
        script = await http.get("/pubsub.js")
        assert script.headers["x-typescript-types"] == "/pubsub.d.ts"
        types = await http.get("/pubsub.d.ts")
        assert types.status_code == 200
        assert types.headers["content-type"] == "application/typescript; charset=utf-8"
        assert types.content == TYPES
        assert b"export class PubSubClient" in types.content
        assert types.headers["cache-control"] == "public, max-age=3600"
        again = await http.get("/pubsub.d.ts", headers={"If-None-Match": types.headers["etag"]})
        assert again.status_code == 304

        other = await http.get("/static/client.d.ts")
        assert other.content == TYPES
        assert other.headers["cache-control"] == "public, max-age=60"
        assert (await http.get("/static/client.js")).headers["x-typescript-types"] == (
            "/static/client.d.ts"
        )
