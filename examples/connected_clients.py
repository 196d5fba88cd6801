"""The original fastapi-pubsub example, unchanged but for the import.

Run it:  uvicorn examples.connected_clients:app
In a cluster, set PUBSUB_REDIS_URL=redis://localhost:6379/0 and add --workers 4: every
client then sees the number of clients connected to any worker.
"""

from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket


class SimplePubSubWebsocket(BasePubSubWebSocket):
    async def generate_object_to_send(self):  # type: ignore[no-untyped-def]
        connections = self.connection_manager.get(self.websocket_id)
        return {"num_connected_clients": len(connections)}


app = FastAPI()


@app.websocket("/ws/connected_clients")
async def endpoint(websocket: WebSocket):  # type: ignore[no-untyped-def]
    ssw = SimplePubSubWebsocket(websocket, "connected_clients")
    await ssw.run()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
