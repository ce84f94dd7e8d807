"""Dataset replays: interleaving and event construction."""

from __future__ import annotations

from deploy.lab.replay import events_from_sequences, interleave
from streams.events import EventType


def test_interleave_round_robins_users_and_keeps_each_users_order() -> None:
    seqs = [("a", ["a1", "a2", "a3"]), ("b", ["b1"]), ("c", ["c1", "c2"])]
    out = list(interleave(seqs))
    assert [x[1] for x in out] == ["a1", "b1", "c1", "a2", "c2", "a3"]


def test_events_are_valid_deterministic_and_ordered_in_time() -> None:
    seqs = [(f"u{i}", [f"i{j}" for j in range(i + 2)]) for i in range(20)]
    events = events_from_sequences(seqs, seed=3)
    again = events_from_sequences(seqs, seed=3)
    assert events == again
    assert len(events) == sum(len(s) for _, s in seqs)
    assert len({e.event_id for e in events}) == len(events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert {e.event_type for e in events} == set(EventType)
    per_user = {}
    for e in events:
        per_user.setdefault(e.user_id, []).append(e.item_id)
    assert per_user == dict(seqs)
    assert len(events_from_sequences(seqs, limit=7)) == 7
