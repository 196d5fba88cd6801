"""The demo app, with the library's log lines set up by ``configure_logging()``."""

from fastapi_pubsub_cluster.logs import configure_logging

configure_logging()

from fastapi_pubsub_cluster.demo.asgi import app  # noqa: E402

__all__ = ["app"]
