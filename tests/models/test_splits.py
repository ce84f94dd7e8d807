"""Splits: held-out targets and later events never reach the training data."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from models.datasets import PrefixTarget
from models.interactions import Interaction
from models.splits import leave_one_out, session_split, time_split


@given(
    st.dictionaries(
        st.text("uvw", min_size=1, max_size=3),
        st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=12),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=60, deadline=None)
def test_leave_one_out_protocol(sequences: dict[str, list[str]]) -> None:
    split = leave_one_out(sequences)
    per_user: dict[str, list[str]] = {}
    for it in sorted(split.train, key=lambda i: (i.user_id, i.ts)):
        per_user.setdefault(it.user_id, []).append(it.item_id)
    for user, items in sequences.items():
        if len(items) >= 3:
            assert per_user[user] == items[:-2]  # neither validation nor test item
        else:
            assert per_user[user] == items
    assert len(split.valid) == len(split.test) == sum(len(s) >= 3 for s in sequences.values())
    for v, t in zip(split.valid, split.test, strict=True):
        items = sequences[t.user_id]
        assert (v.target, t.target) == (items[-2], items[-1])
        assert [h[0] for h in v.history] == items[:-2]
        assert [h[0] for h in t.history] == items[:-1]


@given(
    st.lists(
        st.tuples(st.sampled_from("uvwxyz"), st.sampled_from("abcde"), st.integers(0, 50)),
        min_size=5,
        max_size=60,
    )
)
@settings(max_examples=60, deadline=None)
def test_time_split_has_no_future_leak(rows: list[tuple[str, str, int]]) -> None:
    events = [Interaction(u, i, "click", float(ts)) for u, i, ts in rows]
    try:
        split = time_split(events, valid_fraction=0.2, test_fraction=0.2, max_cases=None)
    except ValueError:
        # Only when the first held-out timestamp is also the oldest one.
        stamps = sorted(it.ts for it in events)
        assert stamps[int(len(stamps) * 0.6)] == stamps[0]
        return
    last_train = max(it.ts for it in split.train)
    held = [it for it in events if it.ts > last_train]
    # Every held-out event is later than all training events ...
    assert all(it.ts > last_train for it in held)
    # ... and each case's history holds only that user's events before its target.
    for case in split.valid + split.test:
        assert case.history
        user_events = [it for it in events if it.user_id == case.user_id]
        assert len(case.history) < len(user_events)


def test_time_split_windows_are_ordered() -> None:
    events = [Interaction(f"u{i % 3}", f"i{i % 7}", "browse", float(i)) for i in range(100)]
    split = time_split(events, valid_fraction=0.1, test_fraction=0.1, max_cases=None)
    assert max(it.ts for it in split.train) < 80
    assert len(split.valid) == 10 and len(split.test) == 10
    capped = time_split(events, valid_fraction=0.1, test_fraction=0.1, max_cases=4, seed=1)
    assert len(capped.test) == 4
    assert all(c in split.test for c in capped.test)


def test_session_split_uses_newest_sessions_for_validation() -> None:
    sessions = [[str(i), str(i + 1), str(i + 2)] for i in range(10)]
    split = session_split(sessions, [PrefixTarget(("1",), "2")], valid_fraction=0.2)
    trained_sessions = {it.user_id for it in split.train}
    assert len(trained_sessions) == 8
    assert {it.item_id for it in split.train} == {str(i) for i in range(10)}
    assert len(split.valid) == 2 * 2  # two held-out sessions, two prefixes each
    assert [c.target for c in split.valid] == ["9", "10", "10", "11"]
    assert [(tuple(h[0] for h in c.history), c.target) for c in split.test] == [(("1",), "2")]
    recent = session_split(sessions, [], valid_fraction=0.2, max_train_sessions=3)
    assert len({it.user_id for it in recent.train}) == 3
    assert min(int(it.item_id) for it in recent.train) == 5


def test_session_split_holds_out_only_what_validation_needs() -> None:
    """As many newest sessions as give `max_valid_cases` cases, at most `valid_fraction`:
    a large file keeps its newest sessions in training, a small one is capped."""
    sessions = [[str(i), str(i + 1), str(i + 2)] for i in range(100)]  # 2 cases each
    split = session_split(sessions, [], valid_fraction=0.1, max_valid_cases=5)
    assert len({it.user_id for it in split.train}) == 97  # 3 sessions give >= 5 cases
    assert len(split.valid) == 5  # the overshoot trimmed by the subsample
    assert {c.target for c in split.valid} <= {"98", "99", "100", "101"}  # sessions 97-99
    assert "newest 3 training sessions" in split.protocol
    capped = session_split(sessions, [], valid_fraction=0.02, max_valid_cases=1000)
    assert len({it.user_id for it in capped.train}) == 98
    assert len(capped.valid) == 4
