"""A gunicorn worker class for the fast path: uvicorn with the library's websocket protocol.

    gunicorn app:app \
        --worker-class fastapi_pubsub_cluster.servers.gunicorn_worker.PubSubUvicornWorker

(``examples/gunicorn.conf.py`` sets it). Needs ``gunicorn`` and ``uvicorn-worker``
(``pip install 'fastapi-pubsub-cluster[gunicorn]'``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

from ..logs import attach_to

#: The uvicorn websocket protocol that frames each broadcast once (needs uvicorn >= 0.35).
PROTOCOL = "fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol"


class PubSubUvicornWorker(UvicornWorker):
    """uvicorn's gunicorn worker, serving websockets with
    :class:`~fastapi_pubsub_cluster.servers.uvicorn_ws.PubSubWebSocketProtocol`.

    permessage-deflate is on, as browsers offer it, under the protocol's compression policy
    (``PUBSUB_COMPRESSION``, default ``shared``: each broadcast compressed once per worker,
    the same frame written to every compressing socket). The library's log lines go to
    gunicorn's error log, with its time and level, once.
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "ws": PROTOCOL,
        "ws_per_message_deflate": True,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        attach_to(self.log.error_log)
