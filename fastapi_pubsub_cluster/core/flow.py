"""One channel's messages on their way to one connection: held until the connection is in
the channel (and its replay is read), then released in order, none twice."""

from __future__ import annotations

from ..envelope import stream_id_order
from ..frames import OutgoingFrame


class ChannelFlow:
    """Where one channel's messages to one connection stand.

    While :attr:`held` is a list, live messages wait there (the connection's handshake, or
    its join of the channel, is not complete). :meth:`release` then gives the replay (what
    the channel stored after the client's ``since``) followed by the held messages that
    are newer than it; afterwards :meth:`is_repeat` drops stored messages the replay sent.
    """

    __slots__ = ("_events", "_states", "held", "replay", "replayed_to")

    def __init__(self) -> None:
        self.held: list[OutgoingFrame] | None = []
        self._events = 0  # held frames that are not state
        self._states: dict[str, int] = {}  # where each held state frame is
        #: Frames to send before the held ones (and the stream id they reach), if any.
        self.replay: tuple[list[OutgoingFrame], str | None] | None = None
        #: Where the replay ended, until a newer stored message went out.
        self.replayed_to: tuple[int, int] | None = None

    def hold(self, frame: OutgoingFrame, limit: int) -> bool:
        """Keep ``frame`` for later; False (nothing kept) once ``limit`` frames wait. A
        state frame (a count, a presence event) replaces the one of its state held before,
        and never counts against ``limit``: a join slowed by a storm is not a slow client."""
        held = self.held
        assert held is not None  # only while holding
        state = frame.state
        if state is not None:
            at = self._states.get(state)
            if at is None:
                self._states[state] = len(held)
                held.append(frame)
            else:
                held[at] = frame
            return True
        if self._events >= limit:
            return False
        self._events += 1
        held.append(frame)
        return True

    def release(self) -> tuple[list[OutgoingFrame], list[OutgoingFrame]]:
        """Stop holding: the replay to send first, then the held frames it did not cover."""
        held, self.held = self.held or [], None
        self._states.clear()
        replayed, last_id = self.replay or ([], None)
        self.replay = None
        cutoff = stream_id_order(last_id) if last_id is not None else None
        self.replayed_to = cutoff
        if cutoff is None:
            return replayed, held
        newer = [f for f in held if not f.stream_id or stream_id_order(f.stream_id) > cutoff]
        return replayed, newer

    def is_repeat(self, frame: OutgoingFrame) -> bool:
        """True for a stored message the replay already sent (a worker may deliver the
        same stored messages again: its own replay after a lost link)."""
        if self.replayed_to is None or not frame.stream_id:
            return False
        if stream_id_order(frame.stream_id) <= self.replayed_to:
            return True
        self.replayed_to = None
        return False
