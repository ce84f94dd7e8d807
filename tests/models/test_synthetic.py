"""Synthetic shop: determinism, schema and funnel/sequence structure."""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict

import pytest

from models.interactions import CHANNELS, EVENT_TYPES, Interaction
from models.synthetic import EPOCH_START, ShopEvent, SyntheticShop, generate_shop


def _per_user(shop: SyntheticShop) -> dict[str, list[ShopEvent]]:
    per_user: dict[str, list[ShopEvent]] = defaultdict(list)
    for event in shop.events:
        per_user[event.user_id].append(event)
    return per_user


def test_same_seed_same_shop() -> None:
    a = generate_shop(n_items=120, n_users=40, seed=5)
    b = generate_shop(n_items=120, n_users=40, seed=5)
    assert a.catalog == b.catalog
    assert a.events == b.events


def test_different_seed_different_shop() -> None:
    a = generate_shop(n_items=120, n_users=40, seed=5)
    b = generate_shop(n_items=120, n_users=40, seed=6)
    assert [e.event_id for e in a.events] != [e.event_id for e in b.events]


def test_catalog_schema(tiny_shop: SyntheticShop) -> None:
    assert len(tiny_shop.catalog) == 200
    assert [c.item_id for c in tiny_shop.catalog] == [f"sku-{i:05d}" for i in range(200)]
    assert len({c.category for c in tiny_shop.catalog}) == 8
    for item in tiny_shop.catalog:
        assert re.fullmatch(r"[A-Z][\w-]+( [A-Z][\w-]*)+", item.title), item.title
        assert item.price > 0
    assert tiny_shop.item("sku-00042").item_id == "sku-00042"


def test_event_schema(tiny_shop: SyntheticShop) -> None:
    events = tiny_shop.events
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert events[0].ts >= EPOCH_START
    assert len({e.event_id for e in events}) == len(events)
    catalog = {c.item_id: c for c in tiny_shop.catalog}
    for e in events:
        uuid.UUID(e.event_id)  # well-formed
        assert re.fullmatch(r"user-\d{4}", e.user_id)
        assert e.item_id in catalog
        assert e.event_type in EVENT_TYPES
        assert e.channel in CHANNELS
        if e.event_type == "browse":
            assert e.dwell_ms is not None and e.dwell_ms > 0
        else:
            assert e.dwell_ms is None
        if e.event_type == "purchase":
            assert e.order_id is not None and e.quantity is not None and e.quantity >= 1
            assert e.price == catalog[e.item_id].price
        else:
            assert e.order_id is None and e.quantity is None and e.price is None


def test_funnel_order(tiny_shop: SyntheticShop) -> None:
    counts = Counter(e.event_type for e in tiny_shop.events)
    assert counts["browse"] > counts["click"] > counts["purchase"] > 0
    for events in _per_user(tiny_shop).values():
        for prev, cur in zip(events, events[1:], strict=False):
            # A click always directly follows the browse of the same item, a purchase the
            # click of the same item (per user timeline).
            if cur.event_type == "click":
                assert (prev.event_type, prev.item_id) == ("browse", cur.item_id)
            if cur.event_type == "purchase":
                assert (prev.event_type, prev.item_id) == ("click", cur.item_id)
            assert cur.ts > prev.ts


def test_users_mostly_use_their_channel(tiny_shop: SyntheticShop) -> None:
    shares = []
    for events in _per_user(tiny_shop).values():
        counts = Counter(e.channel for e in events)
        shares.append(counts.most_common(1)[0][1] / len(events))
    assert sum(shares) / len(shares) > 0.7


def test_next_item_is_predictable(tiny_shop: SyntheticShop) -> None:
    # Along browse -> next browse transitions, each item's most frequent successor should
    # carry a large share: that is the sequential signal popularity cannot capture.
    successors: dict[str, Counter[str]] = defaultdict(Counter)
    for events in _per_user(tiny_shop).values():
        browses = [e.item_id for e in events if e.event_type == "browse"]
        for a, b in zip(browses, browses[1:], strict=False):
            successors[a][b] += 1
    top = sum(c.most_common(1)[0][1] for c in successors.values())
    total = sum(sum(c.values()) for c in successors.values())
    assert top / total > 0.4


def test_to_interaction(tiny_shop: SyntheticShop) -> None:
    event = tiny_shop.events[0]
    assert event.to_interaction() == Interaction(
        event.user_id, event.item_id, event.event_type, event.ts, event.channel
    )
    assert len(tiny_shop.interactions()) == len(tiny_shop.events)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_items": 0},
        {"n_users": 0},
        {"n_items": 5, "n_categories": 6},
        {"sessions_per_user": (3, 2)},
    ],
)
def test_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_shop(**kwargs)  # type: ignore[arg-type]
