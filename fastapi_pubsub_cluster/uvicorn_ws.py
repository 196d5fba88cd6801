"""Kept so that ``--ws fastapi_pubsub_cluster.uvicorn_ws:PubSubWebSocketProtocol`` in existing
deployments goes on working: the protocol lives in
:mod:`fastapi_pubsub_cluster.servers.uvicorn_ws`."""

from .servers.uvicorn_ws import Compression, PubSubWebSocketProtocol

__all__ = ["Compression", "PubSubWebSocketProtocol"]
