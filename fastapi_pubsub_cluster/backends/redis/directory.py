"""Which worker holds which connection, and which connections are a user's: for targeted
sends (``send_to``, ``send_to_user``).

Each worker keeps, under its own worker id, a hash of the connections it holds (connection
id -> its instance and user id) and subscribes its own inbox topic; each user has a set of
connection ids. A connection id starts with its worker's id, so a sender knows the inbox and
the hash from the id alone. Presence of users converges as channel presence does: a worker
reconciles its own entries against its local truth when a change is in doubt and now and
then regardless, and a reaper removes what a dead worker instance owned.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ...core.backend import FanOutSink
from ...envelope import Envelope, EventKind, encode_envelope
from . import scripts
from .clients import CommandClient, text
from .gate import ChannelGate
from .keys import RedisKeys

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Heartbeats between two reconciliations of a worker's directory entries.
BEATS_PER_RECONCILE = 10
#: The directory's name in the gate (no channel id can hold a NUL).
_GATE_NAME = "\x00directory"


class Directory:
    """This worker's entries in the connection directory, and sending through it."""

    #: The directory's name in the gate, held beside the channels a batch changes.
    GATE_NAME = _GATE_NAME

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        *,
        worker_id: str,
        instance: Callable[[], str],
        publish_command: str,
        local: FanOutSink,
        gate: ChannelGate,
        inline: bool,
    ) -> None:
        self._client = client
        self._keys = keys
        self._worker_id = worker_id
        self._instance = instance
        self._publish_command = publish_command
        self._local = local
        self._gate = gate
        #: True on a single Redis: the join and leave scripts write the entries themselves,
        #: atomically with the channel's; on a cluster they live on other slots and are
        #: written beside them (:meth:`stage`).
        self.inline = inline
        self._send = client.register_script(scripts.SEND)
        self._reconcile = client.register_script(scripts.RECONCILE_CONNECTIONS)
        self._reap = client.register_script(scripts.REAP_CONNECTIONS)
        self._in_doubt = False
        self._beats = 0

    @property
    def inbox(self) -> str:
        """This worker's inbox topic."""
        return self._keys.inbox(self._worker_id)

    def doubt(self) -> None:
        """Reconcile at the next heartbeat."""
        self._in_doubt = True

    def entry(self, user_id: str | None) -> str:
        """The value of a connection's entry in the worker's hash: its instance and user."""
        return f"{self._instance()} {user_id or ''}"

    def stage(self, pipe: Any, kind: str, connection_id: str, user_id: str | None) -> None:
        """Queue on ``pipe`` the entries a join (``"j"``) or leave of ``connection_id``
        changes, where the scripts do not write them (not :attr:`inline`)."""
        worker_connections = self._keys.worker_connections(self._worker_id)
        if kind == "j":
            pipe.hset(worker_connections, connection_id, self.entry(user_id))
            if user_id is not None:
                pipe.sadd(self._keys.user_connections(user_id), connection_id)
        else:
            if user_id is not None:
                pipe.srem(self._keys.user_connections(user_id), connection_id)
            pipe.hdel(worker_connections, connection_id)

    async def keep(self) -> None:
        """One heartbeat's work: reconcile if in doubt, or every few heartbeats."""
        self._beats += 1
        if self._in_doubt or self._beats >= BEATS_PER_RECONCILE:
            await self.reconcile()

    async def reconcile(self) -> None:
        """Make this worker's entries match its live connections."""
        async with self._gate.reconciliation(_GATE_NAME):
            await self._reconcile_alone()

    async def _reconcile_alone(self) -> None:
        self._in_doubt = True
        self._beats = 0
        live = dict(self._local.local_user_ids())
        args: list[str] = [self._instance()]
        for connection_id, user_id in live.items():
            args += [connection_id, user_id or ""]
        removed = await self._reconcile(
            keys=[self._keys.worker_connections(self._worker_id)], args=args
        )
        await self._fix_users(removed, live)
        self._in_doubt = False

    async def reap(self, instance: str) -> int:
        """Remove what worker instance ``instance`` registered; how many connections."""
        worker_id = instance.rpartition("#")[0]
        removed = await self._reap(keys=[self._keys.worker_connections(worker_id)], args=[instance])
        await self._fix_users(removed, {})
        return len(removed) // 2

    async def _fix_users(self, removed: list[Any], live: dict[str, str | None]) -> None:
        """Remove ``removed`` entries from their users' sets; add the ``live`` ones."""
        async with self._client.pipeline(transaction=False) as pipe:
            for i in range(0, len(removed), 2):
                owner = text(removed[i + 1]).partition(" ")[2]
                if owner:
                    pipe.srem(self._keys.user_connections(owner), text(removed[i]))
            for connection_id, user_id in live.items():
                if user_id is not None:
                    pipe.sadd(self._keys.user_connections(user_id), connection_id)
            await pipe.execute()

    async def user_connections(self, user_id: str) -> frozenset[str]:
        """Ids of ``user_id``'s connections on every worker."""
        members = await self._client.smembers(self._keys.user_connections(user_id))
        return frozenset(text(m) for m in members)

    async def send(self, worker_id: str, connection_ids: Sequence[str], payload: Any) -> int:
        """Publish a DIRECT envelope on ``worker_id``'s inbox if it holds any of
        ``connection_ids``; how many it holds (0 if its inbox has no subscriber)."""
        envelope = Envelope(
            EventKind.DIRECT,
            "",
            self._worker_id,
            uuid.uuid4().hex,
            0,
            [list(connection_ids), payload],
            time.time(),
        )
        held = await self._send(
            keys=[self._keys.worker_connections(worker_id)],
            args=[
                self._publish_command,
                self._keys.inbox(worker_id),
                encode_envelope(envelope),
                *connection_ids,
            ],
        )
        return int(held)
