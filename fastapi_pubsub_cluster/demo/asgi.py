"""A module-level demo app for servers that take an import string.

``uvicorn fastapi_pubsub_cluster.demo.asgi:app --workers 4`` or gunicorn with
``uvicorn.workers.UvicornWorker``: each worker imports this module and builds its own hub
from the ``PUBSUB_*`` environment variables.
"""

from .app import create_app

app = create_app()
