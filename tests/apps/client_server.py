"""The client test app for server processes: a hub configured by ``PUBSUB_*`` variables."""

from fastapi_pubsub_cluster import PubSubHub
from tests.apps.client_app import build_app

app = build_app(PubSubHub())
