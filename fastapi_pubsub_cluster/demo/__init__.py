"""A small live demo of the library: ``python -m fastapi_pubsub_cluster.demo``.

The page shows how many clients are in a channel (cluster-wide), a chat that reaches every
client of the channel, and the worker process each message went through.
"""

from .app import DEMO_CHANNEL_ENV, DemoSocket, create_app

__all__ = ["DEMO_CHANNEL_ENV", "DemoSocket", "create_app"]
