"""Profile folding: bounded, idempotent, deterministic."""

from __future__ import annotations

import json
from random import Random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import BrowseEvent, ClickEvent, Event, PurchaseEvent
from streams.profile import Profile, ProfileLimits, apply_event, event_id_hash

TS = 1_790_000_000.0


def click(i: int, item: str = "a", user: str = "u") -> ClickEvent:
    return ClickEvent(event_id=f"c{i}", user_id=user, item_id=item, ts=TS + i)


def test_fold_records_history_counts_purchases_and_last_seen() -> None:
    p = Profile()
    assert apply_event(p, click(1, "a"), ProfileLimits())
    assert apply_event(
        p,
        BrowseEvent(event_id="b1", user_id="u", item_id="b", ts=TS + 5, channel="app"),
        ProfileLimits(),
    )
    assert apply_event(
        p,
        PurchaseEvent(event_id="p1", user_id="u", item_id="a", ts=TS + 3, order_id="o", price=1.0),
        ProfileLimits(),
    )
    # Event-time order, whatever the arrival order.
    assert p.history() == [("a", "click", "web"), ("a", "purchase", "web"), ("b", "browse", "app")]
    assert p.counts == {"click": 1, "browse": 1, "purchase": 1}
    assert p.purchased_items() == {"a"}
    assert p.last_seen == TS + 5  # out-of-order event does not move it back


def test_replayed_event_is_not_applied_twice() -> None:
    p = Profile()
    ev = click(1)
    assert apply_event(p, ev, ProfileLimits())
    before = orjson.dumps(p.to_dict())
    assert not apply_event(p, ev, ProfileLimits())
    assert orjson.dumps(p.to_dict()) == before


def test_everything_is_bounded() -> None:
    limits = ProfileLimits(history_len=5, max_purchased=3, dedup_window=4)
    p = Profile()
    for i in range(20):
        apply_event(
            p,
            PurchaseEvent(
                event_id=f"p{i}", user_id="u", item_id=f"i{i}", ts=TS + i, order_id="o", price=1.0
            ),
            limits,
        )
    assert len(p.recent) == 5 and p.recent[-1][0] == "i19"
    assert [x[0] for x in p.purchased] == ["i17", "i18", "i19"]
    assert [x[1] for x in p.seen] == [event_id_hash(f"p{i}") for i in range(16, 20)]
    assert p.counts == {"purchase": 20}


def test_repurchase_moves_item_to_most_recent() -> None:
    p = Profile()
    for i, item in enumerate(["a", "b", "a"]):
        apply_event(
            p,
            PurchaseEvent(
                event_id=f"p{i}", user_id="u", item_id=item, ts=TS + i, order_id="o", price=1.0
            ),
            ProfileLimits(),
        )
    assert p.purchased == [["b", TS + 1, "o"], ["a", TS + 2, "o"]]


def make_event(kind: int, i: int, item: int) -> Event:
    common = {"event_id": f"e{i}", "user_id": "u", "item_id": f"i{item}", "ts": TS + (i % 7)}
    if kind == 0:
        return ClickEvent(**common)
    if kind == 1:
        return BrowseEvent(**common, dwell_ms=10)
    return PurchaseEvent(**common, order_id="o", price=2.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_fold_is_independent_of_arrival_order(specs: list[tuple[int, int]], rnd: Random) -> None:
    """Events of one user arrive from three topics in no fixed order; the profile must not care."""
    events = [make_event(kind, i, item) for i, (kind, item) in enumerate(specs)]
    limits = ProfileLimits(history_len=6, max_purchased=3, dedup_window=50)
    reference = Profile()
    for ev in events:
        apply_event(reference, ev, limits)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    other = Profile()
    for ev in shuffled + shuffled[:3]:  # replays included
        apply_event(other, ev, limits)
    assert other == reference


def test_json_round_trip_is_lossless() -> None:
    p = Profile()
    for i in range(3):
        apply_event(p, click(i, f"x{i}"), ProfileLimits())
    restored = Profile.from_dict(orjson.loads(orjson.dumps(p.to_dict())))
    assert restored == p
    assert Profile.from_dict(None) == Profile()


def test_stored_bytes_are_plain_json_and_round_trip() -> None:
    p = Profile()
    apply_event(p, click(1, "a"), ProfileLimits())
    apply_event(
        p,
        PurchaseEvent(event_id="p1", user_id="u", item_id="b", ts=TS + 2, order_id="o", price=2.5),
        ProfileLimits(),
    )
    raw = p.to_json()
    assert json.loads(raw) == p.to_dict()  # any JSON tool can read the changelog
    assert Profile.from_json(raw) == p
    assert Profile.from_json(None) == Profile()
