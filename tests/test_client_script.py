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
