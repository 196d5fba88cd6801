"""A gunicorn worker class for the fast path: uvicorn with the library's websocket protocol.

    gunicorn app:app \
        --worker-class fastapi_pubsub_cluster.servers.gunicorn_worker.PubSubUvicornWorker

(``examples/gunicorn.conf.py`` sets it). Needs ``gunicorn`` and ``uvicorn-worker``
(``pip install 'fastapi-pubsub-cluster[gunicorn]'``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

from ..backends.redis.clients import RedisEndpoint
from ..config_errors import STARTUP_FAILURE, exit_on_configuration_error
from ..logs import attach_to
from ..redaction import redact_url
from ..settings import PubSubSettings

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

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In gunicorn's master, before any worker starts: a bad ``PUBSUB_*`` setting, or
        a ``PUBSUB_REDIS_URL`` that does not answer, stops the server with one line and
        status 3. (Left to the workers, each would fail on its own, and gunicorn's master,
        halting on the first, prints a traceback of its own when the next one fails.)"""
        parent = getattr(super(), "check_config", None)
        if parent is not None:
            parent(cfg, log)
        # Only the settings' own variables: unknown ones are each worker's to report, once,
        # in gunicorn's format (a note made here would be inherited, and never said there).
        known = {PubSubSettings.environment_variable(name) for name in PubSubSettings.model_fields}
        environ = {name: value for name, value in os.environ.items() if name.upper() in known}
        with exit_on_configuration_error():
            settings = PubSubSettings.from_env(environ)
        if settings.redis_url and not asyncio.run(_answers(settings)):
            url = redact_url(settings.redis_url)
            print(
                f"fastapi-pubsub-cluster: could not start: Redis at {url} "
                "(PUBSUB_REDIS_URL) does not answer",
                file=sys.stderr,
            )
            raise SystemExit(STARTUP_FAILURE)


async def _answers(settings: PubSubSettings) -> bool:
    endpoint = RedisEndpoint(settings.redis_url or "", settings, client_name=None)
    try:
        return await endpoint.answers()
    finally:
        await endpoint.aclose()
