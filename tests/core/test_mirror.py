"""The membership mirror: a channel's members, changed in the order Redis recorded them."""

from __future__ import annotations

from typing import Any

from fastapi_pubsub_cluster.core.backend import ChannelLoaded
from fastapi_pubsub_cluster.core.mirror import MembershipMirror
from fastapi_pubsub_cluster.envelope import Envelope, EventKind


def same(channel: str, member: str) -> str:
    return member


def join(seq: int, member: str, payload: Any = True, channel: str = "room") -> Envelope:
    return Envelope(EventKind.JOIN, channel, "worker", member, seq, payload)


def leave(seq: int, member: str, channel: str = "room") -> Envelope:
    return Envelope(EventKind.LEAVE, channel, "worker", member, seq, True)


def loaded(mirror: MembershipMirror, members: set[str], seq: int, **meta: Any) -> bool:
    return mirror.load(ChannelLoaded("room", frozenset(members), seq, meta), same)


def test_a_loaded_channel_holds_the_snapshots_members_at_its_sequence_number() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a", "b"}, 7)
    assert mirror.get("room") == {"a", "b"}
    assert mirror.state("room") == (7, 2)
    assert mirror.is_loaded("room")


def test_a_channel_not_loaded_is_empty_and_takes_no_events() -> None:
    mirror = MembershipMirror()
    assert mirror.apply(join(1, "a"), same) is False
    assert mirror.get("room") == frozenset()
    assert mirror.state("room") is None


def test_an_event_newer_than_the_snapshot_applies() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 3)
    assert mirror.apply(join(4, "b"), same) is True
    assert mirror.apply(leave(5, "a"), same) is True
    assert mirror.get("room") == {"b"}
    assert mirror.state("room") == (5, 1)


def test_an_event_the_snapshot_already_holds_changes_nothing() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 3)
    assert mirror.apply(leave(3, "a"), same) is False
    assert mirror.get("room") == {"a"}


def test_an_event_heard_twice_applies_once() -> None:
    mirror = MembershipMirror()
    loaded(mirror, set(), 0)
    assert mirror.apply(join(1, "a"), same) is True
    assert mirror.apply(join(1, "a"), same) is False
    assert mirror.state("room") == (1, 1)


def test_an_older_event_after_a_newer_one_is_ignored() -> None:
    mirror = MembershipMirror()
    loaded(mirror, set(), 0)
    mirror.apply(leave(2, "a"), same)
    assert mirror.apply(join(1, "a"), same) is False
    assert mirror.get("room") == frozenset()


def test_events_heard_before_the_snapshot_apply_after_it_where_newer() -> None:
    mirror = MembershipMirror()
    mirror.hold_early(join(2, "old"))  # part of the snapshot
    mirror.hold_early(join(5, "new"))  # after it
    loaded(mirror, {"old"}, 4)
    assert mirror.get("room") == {"old", "new"}
    assert mirror.state("room") == (5, 2)


def test_a_reload_keeps_the_events_heard_meanwhile_and_says_the_members_changed() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 3)
    mirror.begin_reload("room")
    mirror.apply(join(4, "b"), same)
    changed = loaded(mirror, {"a", "c"}, 3)  # the snapshot misses b's join, which is newer
    assert changed is True
    assert mirror.get("room") == {"a", "b", "c"}


def test_a_reload_that_finds_the_same_members_says_nothing_changed() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 3)
    mirror.begin_reload("room")
    assert loaded(mirror, {"a"}, 3) is False


def test_a_first_load_is_not_a_reload() -> None:
    assert loaded(MembershipMirror(), {"a"}, 1) is False


def test_after_a_counter_went_back_a_reload_applies_the_events_that_looked_old() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 10)
    mirror.begin_reload("room")
    assert mirror.apply(join(4, "b"), same) is False  # older than the view: kept aside
    loaded(mirror, {"a"}, 3)  # Redis' counter went back to 3
    assert mirror.get("room") == {"a", "b"}
    assert mirror.state("room") == (4, 2)


def test_a_joins_metadata_is_kept_and_its_leave_drops_it() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 1, a={"name": "Ann"})
    mirror.apply(join(2, "b", [True, '{"name": "Bob"}']), same)
    assert mirror.presence("room") == {"a": {"name": "Ann"}, "b": {"name": "Bob"}}
    mirror.apply(leave(3, "b"), same)
    assert mirror.presence("room") == {"a": {"name": "Ann"}}


def test_snapshot_metadata_of_non_members_is_left_out() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 1, a=1, gone=2)
    assert mirror.presence("room") == {"a": 1}


def test_dropping_a_channel_forgets_it_and_its_early_events() -> None:
    mirror = MembershipMirror()
    loaded(mirror, {"a"}, 1)
    mirror.drop("room")
    assert not mirror.is_loaded("room")
    assert mirror.channels() == []
