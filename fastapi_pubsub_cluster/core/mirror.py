"""This worker's view of every channel's cluster-wide membership."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..envelope import Envelope, EventKind
from ..membership import membership_metadata
from .backend import ChannelLoaded


class MembershipMirror:
    """Members per channel, changed in the order the backend recorded the changes.

    A channel is loaded from a snapshot (members as of sequence number ``seq``); later
    join and leave events apply only if their sequence number is newer, so an event that
    is part of the snapshot, or heard twice, changes nothing. Events heard before the
    snapshot are kept aside and applied after it; so are those heard while a loaded
    channel waits for a new snapshot (:meth:`begin_reload`). Presence metadata is kept beside, for
    the members that have some.
    """

    __slots__ = ("_early", "_members", "_metadata", "_seq")

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        self._seq: dict[str, int] = {}
        self._early: dict[str, list[Envelope]] = {}

    def get(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel`` on every worker (empty if not mirrored)."""
        return frozenset(self._members.get(channel, ()))

    def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``."""
        metadata = self._metadata.get(channel, {})
        return {member: metadata.get(member) for member in self._members.get(channel, ())}

    def channels(self) -> list[str]:
        """Channels mirrored now."""
        return list(self._members)

    def state(self, channel: str) -> tuple[int, int] | None:
        """The sequence number ``channel``'s members are at, and how many there are (None
        if not mirrored)."""
        members = self._members.get(channel)
        return None if members is None else (self._seq.get(channel, 0), len(members))

    def is_loaded(self, channel: str) -> bool:
        """True once a snapshot of ``channel`` was loaded (and until it is dropped)."""
        return channel in self._members

    def load(self, snapshot: ChannelLoaded, intern: Callable[[str, str], str]) -> bool:
        """Replace ``snapshot.channel``'s members, then apply newer events heard early;
        True if this was a reload (:meth:`begin_reload`) and it changed the members.

        ``intern(channel, id)`` maps an id to an equal string already held elsewhere (one
        string per local connection, not two).
        """
        channel = snapshot.channel
        before = self._members.get(channel)
        # Only begin_reload keeps events aside for a channel already mirrored.
        reloading = before is not None and channel in self._early
        self._members[channel] = {intern(channel, member) for member in snapshot.members}
        self._seq[channel] = snapshot.seq
        self._metadata[channel] = {
            member: value
            for member, value in snapshot.metadata.items()
            if member in self._members[channel]
        }
        for envelope in self._early.pop(channel, []):
            self.apply(envelope, intern)
        return reloading and before != self._members[channel]

    def begin_reload(self, channel: str) -> None:
        """A new snapshot of a loaded ``channel`` is on its way: events applied until it
        comes are also kept, to be applied again to it where they are newer."""
        if channel in self._members:
            self._early.setdefault(channel, [])

    def hold_early(self, envelope: Envelope) -> None:
        """Keep an event of a channel whose snapshot is on its way."""
        self._early.setdefault(envelope.channel, []).append(envelope)

    def apply(self, envelope: Envelope, intern: Callable[[str, str], str]) -> bool:
        """Apply a join or leave of a loaded channel; False if it was not newer."""
        channel = envelope.channel
        members = self._members.get(channel)
        if members is None:
            return False
        reloading = self._early.get(channel)
        if reloading is not None:
            # Kept whatever its number: the snapshot decides what is newer (after a
            # counter went back, events this view thinks old are the ones it needs).
            reloading.append(envelope)
        if envelope.seq <= self._seq.get(channel, 0):
            return False
        self._seq[channel] = envelope.seq
        metadata = self._metadata.setdefault(channel, {})
        if envelope.kind is EventKind.JOIN:
            member = intern(channel, envelope.ref)
            members.add(member)
            value = membership_metadata(envelope.payload)
            if value is not None:
                metadata[member] = value
        else:
            members.discard(envelope.ref)
            metadata.pop(envelope.ref, None)
        return True

    def drop(self, channel: str) -> None:
        """Forget ``channel`` (no longer heard)."""
        self._members.pop(channel, None)
        self._seq.pop(channel, None)
        self._metadata.pop(channel, None)
        self._early.pop(channel, None)

    def clear(self) -> None:
        """Forget everything."""
        self._members.clear()
        self._seq.clear()
        self._metadata.clear()
        self._early.clear()
