"""The one door through which a backend reports what it hears, and the local truth it reads."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from ..envelope import Envelope, EventKind
from ..frames import OutgoingFrame
from ..membership import expand_batch, membership_notify
from ..metrics import Metrics
from ..settings import PubSubSettings
from ..tasks import TaskSupervisor
from .backend import BackendEvent, ChannelLoaded, ChannelReloading, LinkRestored
from .mirror import MembershipMirror
from .recent import SEEN_PUBLICATIONS, RecentIds
from .regeneration import Regenerator
from .registry import LocalRegistry
from .replay import ReconnectHook, StoredDelivery, resync
from .subscription import Subscribers
from .targeted import TargetedSender

Deliver = Callable[[str, OutgoingFrame, float, str | None], int]


class Receiver:
    """Takes what the backend hears (it is the core's :class:`FanOutSink`): published and
    stored messages to local sockets and subscribers, targeted sends to their sockets,
    membership events into the mirror (then ``generate_object_to_send``), snapshots, and
    the resync after a lost link."""

    def __init__(
        self,
        local: LocalRegistry,
        mirror: MembershipMirror,
        *,
        deliver: Deliver,
        stored: StoredDelivery,
        subscribers: Subscribers,
        targeted: TargetedSender,
        regenerator: Regenerator,
        reconnect_hooks: list[ReconnectHook],
        tasks: TaskSupervisor,
        settings: PubSubSettings,
        metrics: Metrics,
        follows: Callable[[str], bool],
    ) -> None:
        self._follows = follows
        self._local = local
        self._mirror = mirror
        self._deliver = deliver
        self._stored = stored
        self._subscribers = subscribers
        self._targeted = targeted
        self._regenerator = regenerator
        self._reconnect_hooks = reconnect_hooks
        self._tasks = tasks
        self._settings = settings
        self._metrics = metrics
        self._seen = RecentIds(SEEN_PUBLICATIONS)

    def receive(self, event: BackendEvent) -> None:
        """Take one event; never blocks, never raises for bad input."""
        if isinstance(event, Envelope):
            self._envelope(event)
        elif isinstance(event, ChannelLoaded | ChannelReloading) and not self._follows(
            event.channel
        ):
            return  # loaded as the core let go of it: a mirror nobody would drop
        elif isinstance(event, ChannelLoaded):
            if self._mirror.load(event, self._local.intern):
                # A check's reload corrected the view. (After a lost link, the resync
                # regenerates once its replay is done.)
                self._regenerator.schedule(event.channel)
        elif isinstance(event, ChannelReloading):
            self._mirror.begin_reload(event.channel)
        elif isinstance(event, LinkRestored):
            # Now, before the link reads again: the replay starts after what was delivered.
            self._stored.hold(event.channels)
            resyncing = resync(
                event.channels,
                stored=self._stored,
                regenerator=self._regenerator,
                hooks=self._reconnect_hooks,
                connections=self._local.connections,
                settings=self._settings,
                metrics=self._metrics,
            )
            self._tasks.spawn(resyncing, name="pubsub-resync")

    def _envelope(self, event: Envelope) -> None:
        kind = event.kind
        if kind is EventKind.MESSAGE:
            if self._seen.add(event.ref):  # a retried publish arrives twice
                channel = event.channel
                frame = OutgoingFrame(event.payload)  # encoded once for sockets and streams
                self._deliver(channel, frame, event.sent_at, event.exclude)
                self._subscribers.feed(channel, frame)
        elif kind is EventKind.STORED:
            self._stored.deliver(
                event.channel, event.ref, event.payload, event.sent_at, event.exclude
            )
        elif kind is EventKind.DIRECT:
            if self._seen.add(event.ref):
                connection_ids, payload = event.payload
                self._targeted.deliver(connection_ids, OutgoingFrame(payload))
        elif kind is EventKind.BATCH:
            self._membership(event.channel, expand_batch(event))
        else:
            self._membership(event.channel, (event,))

    def _membership(self, channel: str, events: Sequence[Envelope]) -> None:
        """Apply joins and leaves of ``channel`` at once: one regeneration for them all."""
        mirror = self._mirror
        if mirror.is_loaded(channel):
            intern = self._local.intern
            notify = False
            for event in events:
                if mirror.apply(event, intern) and membership_notify(event.payload):
                    notify = True
            if notify:
                self._regenerator.schedule(channel)
        elif channel in self._local:
            for event in events:
                mirror.hold_early(event)

    # -- the local truth, as the backend reads it ---------------------------------------

    def local_members(self, channel: str) -> Collection[str]:
        """Ids of this worker's connections in ``channel``."""
        return self._local.ids(channel)

    def local_channels(self) -> Collection[str]:
        """Channels with at least one connection on this worker."""
        return self._local.channels()

    def local_user_ids(self) -> Mapping[str, str | None]:
        """Every connection id on this worker, with its user id (None without one)."""
        return self._local.user_ids()

    def local_metadata(self, channel: str) -> Mapping[str, Any]:
        """Presence metadata of this worker's connections in ``channel`` that have some."""
        return {
            c.id: c.metadata for c in self._local.connections(channel) if c.metadata is not None
        }

    def mirror_state(self, channel: str) -> tuple[int, int] | None:
        """``channel``'s mirror: its last membership event and its number of members."""
        return self._mirror.state(channel)
