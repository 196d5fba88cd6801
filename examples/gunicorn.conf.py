"""Gunicorn settings for a fastapi-pubsub-cluster app: N uvicorn workers behind one port.

    PUBSUB_REDIS_URL=redis://localhost:6379/0 WEB_CONCURRENCY=4 \
        gunicorn -c examples/gunicorn.conf.py fastapi_pubsub_cluster.demo.asgi:app

Each worker is a process with its own hub; Redis (``PUBSUB_REDIS_URL``) is what lets a client
on one worker see the clients and messages of the others. Without it the workers are islands.
"""

from __future__ import annotations

import os

# Where to listen; behind nginx, a loopback or unix socket address.
bind = os.environ.get("BIND", "127.0.0.1:8000")

# One worker per core is a fair start: fan-out is CPU work in each worker.
workers = int(os.environ.get("WEB_CONCURRENCY", str(os.cpu_count() or 1)))

# uvicorn workers (from the `uvicorn-worker` package) serving websockets with the library's
# protocol, which frames (and, for browsers that negotiate permessage-deflate, compresses)
# each broadcast once for every socket (PUBSUB_COMPRESSION picks the policy). The library's
# log lines go to gunicorn's error log. WORKER_CLASS=uvicorn_worker.UvicornWorker for plain ASGI.
worker_class = os.environ.get(
    "WORKER_CLASS", "fastapi_pubsub_cluster.servers.gunicorn_worker.PubSubUvicornWorker"
)

# On SIGTERM (a deploy) a worker gets this long to close its sockets with 1001 and remove
# its presence from Redis before it is killed; the heartbeat TTL reaps it if it is killed.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))

# Seconds a silent worker may go before the arbiter restarts it. Open websockets are not
# "silent": uvicorn workers keep notifying the arbiter while their event loop runs.
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))

keepalive = 5
# Restarting workers now and then limits slow memory growth; jitter spreads the restarts so
# that not every worker drops its clients at once. 0 disables it.
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10

accesslog = os.environ.get("ACCESS_LOG")  # None: no access log; "-": stdout
loglevel = os.environ.get("LOG_LEVEL", "info")


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's gauges from Prometheus' multiprocess files (if that mode is on)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
