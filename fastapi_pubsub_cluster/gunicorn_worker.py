"""Kept so that ``--worker-class fastapi_pubsub_cluster.gunicorn_worker.PubSubUvicornWorker``
in existing deployments goes on working: the worker class lives in
:mod:`fastapi_pubsub_cluster.servers.gunicorn_worker`."""

from .servers.gunicorn_worker import PubSubUvicornWorker

__all__ = ["PubSubUvicornWorker"]
