"""Frequently bought together: decayed, bounded co-purchase counts and their replay.

Two items are co-purchased when one user buys both in the same order or within a
time window (`co_purchase_pairs`, `latest_pairs`). `CoPurchaseCounts` keeps, per
anchor item, the partners bought with it, each weighted by an exponential decay of its
age (half-life), and at most ``max_partners`` of them (the lightest is evicted), so a
stream can keep it per item in a table: the per-anchor state is a small JSON-able dict
(`CoPurchaseCounts.to_dict` / `from_dict`).

`evaluate_bundles` replays a time-ordered purchase log: each time a user buys an item
after a co-purchase partner, did the bundle shown for that partner (the counts' top-N
right after it was bought, learned from the past only) contain it? It measures the
streaming counts beside a static co-occurrence table fitted on a training prefix and
beside popularity, on the same cases. Pure Python; no numpy needed.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_HALF_LIFE_S",
    "DEFAULT_MAX_PARTNERS",
    "DEFAULT_WINDOW_S",
    "BundleReport",
    "CoPurchaseCounts",
    "Purchase",
    "co_purchase_pairs",
    "evaluate_bundles",
    "latest_pairs",
    "purchases_from_sequences",
]

#: Default half-life of a co-purchase's weight: two weeks.
DEFAULT_HALF_LIFE_S = 14 * 86400.0
#: Default number of partners kept per anchor item.
DEFAULT_MAX_PARTNERS = 50
#: Default co-purchase window: purchases of one user within an hour (one shopping trip).
DEFAULT_WINDOW_S = 3600.0
#: Stored weights are relative to the anchor's reference time; past this many
#: half-lives ahead of it (a factor of 2**30) the anchor is rebased, so floats stay finite.
_REBASE_HALF_LIVES = 30.0

#: ``(item_id, order_id, ts)`` of one purchase of one user.
UserPurchase = tuple[str, str | None, float]


class Purchase(NamedTuple):
    """One purchase of a purchase log."""

    user_id: str
    item_id: str
    order_id: str | None
    ts: float


def _co_purchased(a: UserPurchase, b: UserPurchase, window_s: float) -> bool:
    same_order = a[1] is not None and a[1] == b[1]
    return same_order or abs(b[2] - a[2]) <= window_s


def latest_pairs(
    purchases: Sequence[UserPurchase], *, window_s: float
) -> list[tuple[str, str, float]]:
    """The co-purchase pairs the newest purchase forms with the earlier ones.

    What a stream emits on one purchase: the last element of `purchases` against every
    earlier one in the same order or within `window_s`, both directions, stamped with the
    newest purchase's time. An earlier item bought several times counts once; the same
    item is never its own partner.

    Args:
        purchases: ``(item_id, order_id, ts)`` of one user, oldest first, newest last.
        window_s: Co-purchase window in seconds.

    Returns:
        ``(anchor, partner, ts)`` pairs.
    """
    if not purchases:
        return []
    newest = purchases[-1]
    item, ts = newest[0], newest[2]
    partners = dict.fromkeys(
        p[0] for p in purchases[:-1] if p[0] != item and _co_purchased(p, newest, window_s)
    )
    pairs: list[tuple[str, str, float]] = []
    for partner in partners:
        pairs.append((partner, item, ts))
        pairs.append((item, partner, ts))
    return pairs


def co_purchase_pairs(
    purchases: Sequence[UserPurchase], *, window_s: float
) -> list[tuple[str, str, float]]:
    """Every co-purchase pair of one user's purchases (same order, or within `window_s`).

    Args:
        purchases: ``(item_id, order_id, ts)`` of ONE user, oldest first.
        window_s: Co-purchase window in seconds.

    Returns:
        ``(a, b, ts)`` pairs in both directions, stamped with the later purchase's time,
        in the order a stream would emit them (`latest_pairs` of each prefix).
    """
    pairs: list[tuple[str, str, float]] = []
    for end in range(2, len(purchases) + 1):
        pairs.extend(latest_pairs(purchases[:end], window_s=window_s))
    return pairs


def purchases_from_sequences(
    sequences: Mapping[str, Sequence[str]],
    *,
    step_s: float = 86400.0,
    period_s: float = 365 * 86400.0,
    seed: int = 0,
) -> list[Purchase]:
    """A purchase log from ordered item sequences without timestamps (e.g. Amazon Beauty).

    Such data has an order per user but no time, so a replay needs invented times: each
    user starts at a seeded uniform time in ``[0, period_s)`` and buys one item every
    `step_s` seconds, without order ids. With ``window_s = step_s`` the co-purchase
    partner of a purchase is the user's previous one: an "often bought next" measure,
    not a basket one, and the interleaving of users is made up; say so with its numbers.
    """
    rng = random.Random(seed)
    out: list[Purchase] = []
    for user, items in sequences.items():
        start = rng.random() * period_s
        out.extend(
            Purchase(user, item, None, start + pos * step_s) for pos, item in enumerate(items)
        )
    return out


@dataclass
class _Anchor:
    ref: float  # reference time of the stored weights (seconds)
    last: float  # latest co-purchase time seen
    weights: dict[str, float] = field(default_factory=dict)


class CoPurchaseCounts:
    """Per anchor item, its co-purchase partners with exponentially decayed weights.

    A partner's weight is the sum of ``weight * 2 ** (-(now - ts) / half_life_s)`` over
    its co-purchases. Decay is lazy: weights are stored relative to a per-anchor
    reference time and scaled only when read, so `add` is O(1) unless it evicts (O(max
    partners)). Each anchor keeps at most `max_partners` partners: a new partner that
    would exceed it evicts the lightest one (itself, if it is lighter than every other;
    on a tie the older entry goes).

    Args:
        half_life_s: Time for a weight to halve (``math.inf``: no decay).
        max_partners: Partners kept per anchor.
    """

    def __init__(
        self,
        *,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        max_partners: int = DEFAULT_MAX_PARTNERS,
    ) -> None:
        if not half_life_s > 0:
            raise ValueError("half_life_s must be positive")
        if max_partners < 1:
            raise ValueError("max_partners must be positive")
        self.half_life_s = half_life_s
        self.max_partners = max_partners
        self._anchors: dict[str, _Anchor] = {}

    def __len__(self) -> int:
        """Number of anchors with partners."""
        return len(self._anchors)

    def __contains__(self, anchor: object) -> bool:
        """Whether `anchor` has partners."""
        return anchor in self._anchors

    def _factor(self, dt: float) -> float:
        """Decay over `dt` seconds, ``2 ** (-dt / half_life)`` (clamped: floats stay finite)."""
        return float(2.0 ** max(-1000.0, min(1000.0, -dt / self.half_life_s)))

    def add(self, anchor: str, partner: str, ts: float, weight: float = 1.0) -> None:
        """Count one co-purchase of `partner` with `anchor` at time `ts` (seconds).

        Raises:
            ValueError: On a non-finite time or a negative or non-finite weight, or when
                anchor and partner are the same item.
        """
        if not math.isfinite(ts) or not math.isfinite(weight) or weight < 0:
            raise ValueError("ts must be finite and weight finite and >= 0")
        if anchor == partner:
            raise ValueError("an item is not its own co-purchase partner")
        state = self._anchors.get(anchor)
        if state is None:
            state = self._anchors[anchor] = _Anchor(ref=ts, last=ts)
        elif (ts - state.ref) / self.half_life_s > _REBASE_HALF_LIVES:
            self._rebase(state, ts)
        state.last = max(state.last, ts)
        weights = state.weights
        is_new = partner not in weights
        # In units of the reference time: a later co-purchase weighs more than 1 there.
        weights[partner] = weights.get(partner, 0.0) + weight * self._factor(state.ref - ts)
        if is_new and len(weights) > self.max_partners:
            # Lightest first; among equals the existing entry (False) before the newcomer.
            lightest = min(weights, key=lambda p: (weights[p], p == partner))
            del weights[lightest]

    def _rebase(self, state: _Anchor, ref: float) -> None:
        factor = self._factor(ref - state.ref)
        state.weights = {p: w * factor for p, w in state.weights.items()}
        state.ref = ref

    def top(self, anchor: str, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """The `n` heaviest partners of `anchor` with their weights decayed to `now`.

        Args:
            anchor: The item.
            n: How many partners.
            now: Time the weights are decayed to (default: the anchor's latest
                co-purchase). The order does not depend on it.

        Returns:
            ``(partner, weight)``, heaviest first (ties by partner id); empty for an
            unknown anchor.
        """
        state = self._anchors.get(anchor)
        if state is None or n < 1:
            return []
        factor = self._factor((state.last if now is None else now) - state.ref)
        ranked = sorted(state.weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(partner, w * factor) for partner, w in ranked]

    def to_dict(self, anchor: str) -> dict[str, Any]:
        """JSON-able state of one anchor.

        ``{"ref": t, "last": t, "partners": {item: weight at ref}}``: the reference time,
        the latest co-purchase time, and each partner's weight decayed to the reference
        time. An unknown anchor gives no partners.
        """
        state = self._anchors.get(anchor)
        if state is None:
            return {"ref": 0.0, "last": 0.0, "partners": {}}
        return {"ref": state.ref, "last": state.last, "partners": dict(state.weights)}

    def from_dict(self, anchor: str, data: Mapping[str, Any]) -> None:
        """Replace the state of `anchor` with `data` (a `to_dict` value).

        If `data` holds more than `max_partners` partners the heaviest are kept.

        Raises:
            ValueError: If `data` is not a valid state.
        """
        try:
            ref = float(data["ref"])
            last = float(data.get("last", ref))
            partners = {str(p): float(w) for p, w in dict(data["partners"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid co-purchase state for {anchor!r}: {exc!r}") from exc
        values = [ref, last, *partners.values()]
        if not all(math.isfinite(v) for v in values) or any(w < 0 for w in partners.values()):
            raise ValueError(f"invalid co-purchase state for {anchor!r}: non-finite or negative")
        partners.pop(anchor, None)
        if not partners:
            self._anchors.pop(anchor, None)
            return
        kept = sorted(partners.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_partners]
        self._anchors[anchor] = _Anchor(ref=ref, last=last, weights=dict(kept))


@dataclass(frozen=True, slots=True)
class BundleReport:
    """Result of `evaluate_bundles`.

    Attributes:
        n_purchases: Purchases replayed.
        n_cases: Evaluated cases: purchases in the test part (after the training prefix)
            with an earlier co-purchase partner of the same user (window or order).
        cutoff_ts: Time where the training prefix ends.
        hits: Method -> ``{"hit@5": ..., "coverage": ...}``; coverage is the share of
            cases where the method had a non-empty bundle for the trigger item.
    """

    n_purchases: int
    n_cases: int
    cutoff_ts: float
    hits: dict[str, dict[str, float]]


def _static_bundles(
    purchases: Iterable[Purchase], *, window_s: float, n: int
) -> dict[str, list[str]]:
    """Top-n partners per item by plain co-occurrence counts over `purchases`."""
    by_user: dict[str, list[UserPurchase]] = defaultdict(list)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for p in purchases:
        history = by_user[p.user_id]
        history.append((p.item_id, p.order_id, p.ts))
        for anchor, partner, _ in latest_pairs(history, window_s=window_s):
            counts[anchor][partner] += 1
    return {
        anchor: [p for p, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
        for anchor, c in counts.items()
    }


def evaluate_bundles(
    purchases: Sequence[Purchase],
    *,
    window_s: float = DEFAULT_WINDOW_S,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    max_partners: int = DEFAULT_MAX_PARTNERS,
    train_fraction: float = 0.8,
    ks: Sequence[int] = (5, 10),
    recent: int = 20,
) -> BundleReport:
    """Replay a purchase log: hit rate of the next co-purchase, bundles vs baselines.

    Purchases are replayed in time order. A case is a purchase ``p`` (in the last
    ``1 - train_fraction`` of the log) with an earlier purchase ``q`` of the same user
    that it is co-purchased with (same order or within `window_s`), ``q`` being the most
    recent such one and of another item. A method hits at k when ``p``'s item is in its
    top-k bundle for ``q``'s item:

    * ``streaming``: `CoPurchaseCounts` updated by every purchase, the bundle taken right
      after ``q`` was counted (what a worker published then; the past only);
    * ``streaming-no-decay``: the same without decay (infinite half-life);
    * ``static``: plain co-occurrence counts of the training prefix, fixed;
    * ``popularity``: the items bought most often in the training prefix (without ``q``).

    Args:
        purchases: The log (any order; sorted by time here, ties keep their order).
        window_s: Co-purchase window in seconds.
        half_life_s: Decay half-life of the streaming counts.
        max_partners: Partners kept per item by the streaming counts.
        train_fraction: Share of purchases (by time) that fits the static baselines.
        ks: Bundle sizes to score.
        recent: Purchases remembered per user (a user's co-purchase partners are
            looked for among them, as the worker's profile keeps a bounded history).

    Returns:
        A `BundleReport`.

    Raises:
        ValueError: On an empty log, a bad fraction or bad sizes.
    """
    if not purchases:
        raise ValueError("no purchases to replay")
    if not 0 < train_fraction < 1:
        raise ValueError("train_fraction must be in (0, 1)")
    if not ks or min(ks) < 1 or recent < 2:
        raise ValueError("ks must be positive and recent at least 2")
    log = sorted(purchases, key=lambda p: p.ts)
    cut = max(1, min(len(log) - 1, int(len(log) * train_fraction)))
    cutoff_ts = log[cut].ts
    max_k = max(ks)
    static = _static_bundles(log[:cut], window_s=window_s, n=max_k)
    popular = [item for item, _ in Counter(p.item_id for p in log[:cut]).most_common(max_k + 1)]
    streams = {
        "streaming": CoPurchaseCounts(half_life_s=half_life_s, max_partners=max_partners),
        "streaming-no-decay": CoPurchaseCounts(half_life_s=math.inf, max_partners=max_partners),
    }
    methods = [*streams, "static", "popularity"]
    keys = [*(f"hit@{k}" for k in ks), "coverage"]
    hits = {m: dict.fromkeys(keys, 0) for m in methods}
    # Per user: (purchase, the streaming bundles published right after it) of the recent ones.
    recent_by_user: dict[str, deque[tuple[UserPurchase, dict[str, list[str]]]]] = defaultdict(
        lambda: deque(maxlen=recent)
    )
    n_cases = 0
    for index, p in enumerate(log):
        mine = (p.item_id, p.order_id, p.ts)
        history = recent_by_user[p.user_id]
        trigger = next(
            (
                (q, shown)
                for q, shown in reversed(history)
                if q[0] != p.item_id and _co_purchased(q, mine, window_s)
            ),
            None,
        )
        if trigger is not None and index >= cut:
            n_cases += 1
            q, shown = trigger
            lists = {
                **shown,
                "static": static.get(q[0], []),
                "popularity": [i for i in popular if i != q[0]][:max_k],
            }
            for method in methods:
                bundle = lists[method]
                hits[method]["coverage"] += bool(bundle)
                for k in ks:
                    hits[method][f"hit@{k}"] += p.item_id in bundle[:k]
        window = [*(q for q, _ in history), mine]
        for counts in streams.values():
            for anchor, partner, ts in latest_pairs(window, window_s=window_s):
                counts.add(anchor, partner, ts)
        published = {name: [i for i, _ in c.top(p.item_id, max_k)] for name, c in streams.items()}
        history.append((mine, published))
    report = {
        m: {key: (value / n_cases if n_cases else 0.0) for key, value in hits[m].items()}
        for m in methods
    }
    return BundleReport(n_purchases=len(log), n_cases=n_cases, cutoff_ts=cutoff_ts, hits=report)
