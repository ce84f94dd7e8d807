"""Train / validation / test splits without future leaks (stdlib only).

Every split returns a `SplitData`: training interactions plus validation and test
`EvalCase`s. A case's history may contain events that are not in the training data
(e.g. the validation item in a leave-one-out test history): histories are model
*inputs*, exactly what the stream would see at that moment. Targets and anything after
them are never in the training interactions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from models.datasets import PrefixTarget
from models.interactions import HistoryItem, Interaction

__all__ = [
    "EvalCase",
    "SplitData",
    "cutoff_split",
    "leave_one_out",
    "session_split",
    "time_split",
]


@dataclass(frozen=True, slots=True)
class EvalCase:
    """One held-out next-item prediction.

    Attributes:
        user_id: The user (or session).
        history: Oldest-first (item_id, event_type, channel) steps before the target.
        target: The held-out item id.
    """

    user_id: str
    history: tuple[HistoryItem, ...]
    target: str


@dataclass(slots=True)
class SplitData:
    """A dataset split for training, model selection and the final test.

    Attributes:
        train: Training interactions (the only data a model may fit on).
        valid: Validation cases (early stopping / model selection).
        test: Test cases (reported once).
        protocol: Human-readable description of the split, for reports.
        item_attributes: Optional item id -> attribute ids (side features).
    """

    train: list[Interaction]
    valid: list[EvalCase]
    test: list[EvalCase]
    protocol: str
    item_attributes: dict[str, list[str]] | None = field(default=None)


def _sample(cases: list[EvalCase], limit: int | None, seed: int) -> list[EvalCase]:
    if limit is None or len(cases) <= limit:
        return cases
    rng = random.Random(seed)
    return [cases[i] for i in sorted(rng.sample(range(len(cases)), limit))]


def leave_one_out(
    sequences: Mapping[str, Sequence[str]],
    *,
    event_type: str = "purchase",
    channel: str = "web",
) -> SplitData:
    """Leave-one-out per user: last item = test, second-to-last = validation.

    Users with at least 3 items train on all but the last two; the validation case is
    (items[:-2] -> items[-2]) and the test case (items[:-1] -> items[-1]). Shorter users
    only contribute training data. Sequences carry no timestamps, so `ts` is the
    position in the sequence.

    Args:
        sequences: User -> oldest-first item ids.
        event_type: Event type given to every interaction (reviews are purchases).
        channel: Channel given to every interaction.

    Returns:
        The split.
    """
    train: list[Interaction] = []
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    for user, items in sequences.items():
        steps = [(item, event_type, channel) for item in items]
        n_train = len(items) - 2 if len(items) >= 3 else len(items)
        train.extend(
            Interaction(user, item, event_type, float(pos), channel)
            for pos, item in enumerate(items[:n_train])
        )
        if len(items) >= 3:
            valid.append(EvalCase(user, tuple(steps[:-2]), items[-2]))
            test.append(EvalCase(user, tuple(steps[:-1]), items[-1]))
    return SplitData(
        train,
        valid,
        test,
        protocol="leave-one-out per user (last = test, second-to-last = validation)",
    )


def _held_out_sessions(
    sessions: Sequence[Sequence[str]], valid_fraction: float, max_cases: int | None
) -> int:
    """How many of the newest sessions `session_split` holds out (see there)."""
    limit = int(len(sessions) * valid_fraction)
    if max_cases is None:
        return limit
    cases = 0
    for n, session in enumerate(reversed(sessions[len(sessions) - limit :]), start=1):
        cases += max(0, len(session) - 1)
        if cases >= max_cases:
            return n
    return limit


def session_split(
    train_sessions: Sequence[Sequence[str]],
    test_cases: Sequence[PrefixTarget],
    *,
    valid_fraction: float = 0.1,
    max_valid_cases: int | None = 20_000,
    max_train_sessions: int | None = None,
    seed: int = 0,
) -> SplitData:
    """Sessions as users: the given test cases, validation from the newest train sessions.

    The newest training sessions (file order is chronological in the SR-GNN
    preprocessing) are held out; each of their prefixes becomes a validation case, like
    the test file. Training uses the remaining sessions only. As many sessions are held
    out as give `max_valid_cases` cases, but at most `valid_fraction` of them: the
    newest sessions are the days just before the test, worth most to training (on
    DIGINETICA, 2 % held out instead of 10 % lifted even co-occurrence's P@20 from .457
    to .480, docs/BENCHMARKS.md), so a large file gives up only what validation needs
    (DIGINETICA: 2.9 %) and a small one still validates on `valid_fraction`.

    Args:
        train_sessions: Sessions of item ids, oldest session first.
        test_cases: The given prefix -> target cases.
        valid_fraction: Most of the training sessions held out for validation.
        max_valid_cases: Validation cases wanted (None = all of `valid_fraction`); the
            newest sessions that give them are held out, and a seeded subsample trims
            the last session's overshoot.
        max_train_sessions: Keep only the most recent N training sessions (None = all),
            for CPU budgets; the report must say so.
        seed: Seed of the validation subsample.

    Returns:
        The split; every interaction is a "browse" (a product view) on "web".
    """
    n_valid = _held_out_sessions(train_sessions, valid_fraction, max_valid_cases)
    fit = list(train_sessions[: len(train_sessions) - n_valid])
    held = train_sessions[len(train_sessions) - n_valid :]
    if max_train_sessions is not None:
        fit = fit[-max_train_sessions:]
    train = [
        Interaction(f"s{i}", item, "browse", float(pos), "web")
        for i, session in enumerate(fit)
        for pos, item in enumerate(session)
    ]
    valid = [
        EvalCase(f"v{i}", tuple((it, "browse", "web") for it in session[:j]), session[j])
        for i, session in enumerate(held)
        for j in range(1, len(session))
    ]
    test = [
        EvalCase(f"t{i}", tuple((it, "browse", "web") for it in case.prefix), case.target)
        for i, case in enumerate(test_cases)
    ]
    subset = "" if max_train_sessions is None else f", most recent {len(fit)} sessions"
    return SplitData(
        train,
        _sample(valid, max_valid_cases, seed),
        test,
        protocol=(
            f"given test prefixes; validation = every prefix of the newest {n_valid} "
            f"training sessions ({n_valid / max(1, len(train_sessions)):.1%}){subset}"
        ),
    )


def time_split(
    interactions: Sequence[Interaction],
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    target_event_types: Sequence[str] | None = None,
    max_cases: int | None = 20_000,
    seed: int = 0,
) -> SplitData:
    """Global time split for event logs: train on the past, evaluate on the future.

    Events are ordered by (ts, input order). The oldest 1 - valid - test share trains;
    every later event (of `target_event_types`, if given) whose user has an earlier event
    becomes a case whose history is all of that user's earlier events. Cases in the
    validation window are validation, later ones test.

    Args:
        interactions: The event log.
        valid_fraction: Share of events (by time order) in the validation window.
        test_fraction: Share of events in the test window.
        target_event_types: Event types that are prediction targets (None = all).
        max_cases: Seeded subsample per window (None = all).
        seed: Sampling seed.

    Returns:
        The split.

    Raises:
        ValueError: If the fractions (or timestamp ties) leave no training data.
    """
    if not (valid_fraction >= 0 and test_fraction > 0 and valid_fraction + test_fraction < 1):
        raise ValueError("need 0 <= valid, 0 < test and valid + test < 1")
    ordered = sorted(enumerate(interactions), key=lambda r: (r[1].ts, r[0]))
    n = len(ordered)
    valid_start = int(n * (1 - valid_fraction - test_fraction))
    test_start = int(n * (1 - test_fraction))
    if valid_start == 0:
        raise ValueError("the time split leaves no training events")
    # Ties at a cutoff stay on the older side's ts boundary: an event at the same second as
    # the first held-out event is held out too, so no training event is "simultaneous".
    t_valid = ordered[valid_start][1].ts
    t_test = ordered[test_start][1].ts if test_start < n else float("inf")
    history: dict[str, list[HistoryItem]] = defaultdict(list)
    train: list[tuple[int, Interaction]] = []
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    for order, it in ordered:
        if it.ts < t_valid:
            train.append((order, it))
        elif target_event_types is None or it.event_type in target_event_types:
            past = history[it.user_id]
            if past:
                case = EvalCase(it.user_id, tuple(past), it.item_id)
                (valid if it.ts < t_test else test).append(case)
        history[it.user_id].append((it.item_id, it.event_type, it.channel))
    if not train:
        raise ValueError("every event ties with the first validation event; no training data")
    train.sort(key=lambda r: r[0])
    return SplitData(
        [it for _, it in train],
        _sample(valid, max_cases, seed),
        _sample(test, max_cases, seed + 1),
        protocol=(
            f"time split: oldest {1 - valid_fraction - test_fraction:.0%} of events train, "
            f"next {valid_fraction:.0%} validation, newest {test_fraction:.0%} test "
            f"(every later event with a known user is a case)"
        ),
    )


def cutoff_split(
    interactions: Sequence[Interaction],
    cutoff: float,
    *,
    valid_fraction: float = 0.1,
    max_cases: int | None = 20_000,
    seed: int = 0,
) -> SplitData:
    """Time split at a fixed instant: the past trains and validates, the rest is the test.

    Events before `cutoff` are ordered by (ts, input order); the newest `valid_fraction`
    of them form the validation window (as in `time_split`, an event at the same second
    as the first validation event is validation too) and the older ones train. Every
    event at or after `cutoff` whose user has an earlier event is a test case; a case's
    history is all of that user's earlier events (training, validation and earlier test
    events alike: what the stream would know at that moment). Nothing at or after
    `cutoff` is ever in `train`.

    Args:
        interactions: The event log.
        cutoff: Unix seconds; events at or after it are held out for the test.
        valid_fraction: Share of the events before `cutoff` held out for validation
            (0 = no validation cases).
        max_cases: Seeded subsample of validation and of test cases (None = all).
        seed: Sampling seed.

    Returns:
        The split.

    Raises:
        ValueError: If `valid_fraction` is outside [0, 1) or no training event is left.
    """
    if not 0 <= valid_fraction < 1:
        raise ValueError("need 0 <= valid_fraction < 1")
    ordered = sorted(enumerate(interactions), key=lambda r: (r[1].ts, r[0]))
    n_past = sum(1 for _, it in ordered if it.ts < cutoff)
    valid_start = int(n_past * (1 - valid_fraction))
    t_valid = ordered[valid_start][1].ts if valid_start < n_past else cutoff
    history: dict[str, list[HistoryItem]] = defaultdict(list)
    train: list[tuple[int, Interaction]] = []
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    for order, it in ordered:
        if it.ts < t_valid:
            train.append((order, it))
        elif history[it.user_id]:
            case = EvalCase(it.user_id, tuple(history[it.user_id]), it.item_id)
            (valid if it.ts < cutoff else test).append(case)
        history[it.user_id].append((it.item_id, it.event_type, it.channel))
    if not train:
        raise ValueError("no training events before the validation window and the cutoff")
    train.sort(key=lambda r: r[0])
    return SplitData(
        [it for _, it in train],
        _sample(valid, max_cases, seed),
        _sample(test, max_cases, seed + 1),
        protocol=(
            f"time split at a cutoff: events before it train, the newest "
            f"{valid_fraction:.0%} of those validate, every later event with a known user "
            "is a test case"
        ),
    )
