"""Flow control of one channel to one connection: held, then released in order, none twice."""

from __future__ import annotations

from fastapi_pubsub_cluster.core.flow import ChannelFlow
from fastapi_pubsub_cluster.frames import OutgoingFrame


def message(n: int, stream_id: str | None = None) -> OutgoingFrame:
    return OutgoingFrame({"n": n}, stream_id)


def count(n: int) -> OutgoingFrame:
    return OutgoingFrame({"count": n}, state="count")


def payloads(frames: list[OutgoingFrame]) -> list[object]:
    return [frame.payload for frame in frames]


def test_held_frames_are_released_in_the_order_they_came() -> None:
    flow = ChannelFlow()
    for n in range(3):
        assert flow.hold(message(n), limit=10)
    replay, held = flow.release()
    assert replay == []
    assert payloads(held) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert flow.held is None


def test_no_more_than_the_limit_is_held() -> None:
    flow = ChannelFlow()
    assert flow.hold(message(1), limit=2)
    assert flow.hold(message(2), limit=2)
    assert not flow.hold(message(3), limit=2)
    assert payloads(flow.release()[1]) == [{"n": 1}, {"n": 2}]


def test_a_state_frame_replaces_the_one_held_before_in_its_place() -> None:
    flow = ChannelFlow()
    flow.hold(count(1), limit=5)
    flow.hold(message(1), limit=5)
    flow.hold(count(2), limit=5)
    assert payloads(flow.release()[1]) == [{"count": 2}, {"n": 1}]


def test_state_frames_never_count_against_the_limit() -> None:
    flow = ChannelFlow()
    assert flow.hold(message(1), limit=1)
    assert flow.hold(count(1), limit=1)
    assert flow.hold(OutgoingFrame({"who": 1}, state="presence"), limit=1)
    assert not flow.hold(message(2), limit=1)


def test_the_replay_comes_first_and_held_messages_it_covers_are_dropped() -> None:
    flow = ChannelFlow()
    flow.hold(message(1, "5-0"), limit=10)
    flow.hold(message(2, "7-0"), limit=10)
    flow.hold(count(3), limit=10)  # no stream id: never covered by a replay
    flow.replay = ([message(0, "4-0"), message(1, "5-0")], "5-0")
    replay, held = flow.release()
    assert payloads(replay) == [{"n": 0}, {"n": 1}]
    assert payloads(held) == [{"n": 2}, {"count": 3}]


def test_after_the_release_stored_messages_the_replay_sent_are_repeats() -> None:
    flow = ChannelFlow()
    flow.replay = ([message(0, "4-0")], "5-0")
    flow.release()
    assert flow.is_repeat(message(1, "5-0"))
    assert not flow.is_repeat(message(2))  # not stored: never a repeat
    assert not flow.is_repeat(message(3, "6-0"))
    assert not flow.is_repeat(message(1, "5-0"))  # past the cutoff now: no longer checked


def test_without_a_replay_nothing_is_a_repeat() -> None:
    flow = ChannelFlow()
    flow.release()
    assert not flow.is_repeat(message(1, "1-0"))
