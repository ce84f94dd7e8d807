"""A deterministic synthetic shop: catalog plus a browse -> click -> purchase event log.

The generator is meant for the demo and for tests. It plants structure that a
sequential recommender can exploit beyond plain popularity:

* Item popularity within a category is Zipf-like, and users prefer a few categories.
* Every category has a hidden "next item" chain (a random permutation of its items).
  Inside a session, users mostly walk that chain (A -> successor(A) -> ...), so the
  next browsed item is predictable from the current one, while the chain order is
  independent of popularity.
* Each visited item goes through a funnel: always browsed, sometimes clicked, and
  sometimes purchased after a click.

Everything is driven by a single `random.Random(seed)`, so the same arguments always
produce the same shop (including event ids).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import uuid
from dataclasses import dataclass, field

from models.interactions import CHANNELS, Interaction

__all__ = [
    "EPOCH_START",
    "CatalogItem",
    "ShopEvent",
    "SyntheticShop",
    "generate_shop",
]

#: Fixed start of the simulated period: 2024-01-01T00:00:00Z as unix seconds.
EPOCH_START: float = 1_704_067_200.0

# Length of the simulated period over which user sessions are spread.
_PERIOD_S = 28 * 24 * 3600.0

# Funnel / walk probabilities. Chosen so that ~1.5 events are emitted per visited item
# and the next browsed item follows the category chain most of the time.
_P_CLICK = 0.35  # P(click | browse)
_P_PURCHASE = 0.25  # P(purchase | click)
_P_CHAIN_NEXT = 0.65  # next item = chain successor
_P_CHAIN_SKIP = 0.10  # next item = successor of the successor
_P_CATEGORY_JUMP = 0.05  # jump to another preferred category (rest: popular item, same cat)
_P_PREFERRED_CHANNEL = 0.8
_P_PREFERRED_CATEGORY = 0.85
_ZIPF_EXPONENT = 1.0
_MEAN_EXTRA_STEPS = 4.0  # session length = 1 + geometric extra steps (capped)
_MAX_STEPS = 14

# (category, nouns, descriptors, price range in currency units)
_CATEGORY_WORDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[float, float]], ...] = (
    (
        "Coffee",
        ("Espresso Beans", "Filter Roast", "Cold Brew Pack", "Decaf Blend", "Pour-Over Kit"),
        ("Dark", "Single-Origin", "Smooth", "Bold", "Fair-Trade", "Morning"),
        (6.0, 40.0),
    ),
    (
        "Tea",
        ("Green Tea", "Earl Grey", "Chai Mix", "Herbal Infusion", "Matcha Tin"),
        ("Loose-Leaf", "Organic", "Spiced", "Jasmine", "Mountain", "Calming"),
        (4.0, 30.0),
    ),
    (
        "Kitchen",
        ("Chef Knife", "Cutting Board", "Saucepan", "Mixing Bowl", "Spatula Set"),
        ("Stainless", "Bamboo", "Non-Stick", "Cast-Iron", "Compact", "Pro"),
        (8.0, 150.0),
    ),
    (
        "Outdoor",
        ("Hiking Boots", "Trail Backpack", "Camping Stove", "Rain Jacket", "Sleeping Bag"),
        ("Waterproof", "Ultralight", "Alpine", "Rugged", "Packable", "Thermal"),
        (20.0, 300.0),
    ),
    (
        "Books",
        ("Cookbook", "Travel Guide", "Mystery Novel", "Poetry Collection", "Field Manual"),
        ("Illustrated", "Pocket", "Hardcover", "Annotated", "Classic", "Bestselling"),
        (7.0, 45.0),
    ),
    (
        "Audio",
        ("Headphones", "Bluetooth Speaker", "Earbuds", "Turntable", "Soundbar"),
        ("Wireless", "Noise-Cancelling", "Studio", "Portable", "Retro", "Bass-Boost"),
        (25.0, 400.0),
    ),
    (
        "Garden",
        ("Watering Can", "Seed Kit", "Pruning Shears", "Planter Box", "Compost Bin"),
        ("Heirloom", "Galvanized", "Self-Watering", "Raised", "Herb", "Balcony"),
        (5.0, 120.0),
    ),
    (
        "Toys",
        ("Puzzle", "Building Blocks", "Plush Bear", "Kite", "Board Game"),
        ("Wooden", "Glow-in-the-Dark", "Classic", "Magnetic", "Family", "Junior"),
        (6.0, 80.0),
    ),
    (
        "Beauty",
        ("Face Serum", "Hand Cream", "Lip Balm", "Shampoo Bar", "Sheet Mask"),
        ("Hydrating", "Vegan", "Lavender", "Citrus", "Sensitive-Skin", "Overnight"),
        (4.0, 60.0),
    ),
    (
        "Fitness",
        ("Yoga Mat", "Kettlebell", "Resistance Bands", "Jump Rope", "Foam Roller"),
        ("Grippy", "Adjustable", "Heavy-Duty", "Travel", "Eco", "Training"),
        (8.0, 120.0),
    ),
    (
        "Stationery",
        ("Notebook", "Fountain Pen", "Sketchbook", "Desk Planner", "Washi Tape"),
        ("Dotted", "Recycled", "Leather-Bound", "Pastel", "A5", "Minimalist"),
        (3.0, 70.0),
    ),
    (
        "Pets",
        ("Dog Leash", "Cat Tree", "Chew Toy", "Pet Bed", "Treat Jar"),
        ("Reflective", "Orthopedic", "Squeaky", "Cozy", "Durable", "Natural"),
        (5.0, 140.0),
    ),
)

_BRANDS: tuple[str, ...] = (
    "Alder",
    "Brava",
    "Cobalt",
    "Dune",
    "Ember",
    "Fjord",
    "Gala",
    "Harbor",
    "Indigo",
    "Juniper",
    "Kestrel",
    "Lumen",
    "Maple",
    "Nimbus",
    "Orchid",
    "Pioneer",
)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One product of the synthetic catalog.

    Attributes:
        item_id: SKU such as "sku-00042".
        title: Made-up readable product name.
        category: Category name (suffixed with a roman-ish number past 12 categories).
        price: Unit price in currency units.
    """

    item_id: str
    title: str
    category: str
    price: float


@dataclass(frozen=True, slots=True)
class ShopEvent:
    """One raw shop event as it would appear on the Kafka topic.

    Attributes:
        event_id: Unique, deterministic (seeded) UUID4-formatted string.
        user_id: User identifier such as "user-0001".
        item_id: SKU of the item.
        event_type: "browse", "click" or "purchase".
        ts: Event time as unix seconds (UTC).
        channel: "web", "app" or "store".
        dwell_ms: Time spent on the product page in milliseconds (browse only).
        order_id: Order identifier (purchase only).
        quantity: Units bought (purchase only).
        price: Unit price paid in currency units (purchase only).
    """

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    ts: float  # unix seconds (UTC)
    channel: str
    dwell_ms: int | None = None
    order_id: str | None = None
    quantity: int | None = None
    price: float | None = None

    def to_interaction(self) -> Interaction:
        """Convert to the model-level `Interaction` (drops funnel/order details)."""
        return Interaction(
            user_id=self.user_id,
            item_id=self.item_id,
            event_type=self.event_type,
            ts=self.ts,
            channel=self.channel,
        )


@dataclass(slots=True)
class SyntheticShop:
    """A generated catalog and its time-ordered event log.

    Attributes:
        catalog: All items, in SKU order.
        events: All events, sorted by `ts` (ties keep generation order).
        seed: Seed the shop was generated from.
    """

    catalog: list[CatalogItem]
    events: list[ShopEvent]
    seed: int
    _by_id: dict[str, CatalogItem] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {item.item_id: item for item in self.catalog}

    def item(self, item_id: str) -> CatalogItem:
        """Look up a catalog item by SKU (raises KeyError if unknown)."""
        return self._by_id[item_id]

    def interactions(self) -> list[Interaction]:
        """All events converted to `Interaction`, in event-log (ts) order."""
        return [event.to_interaction() for event in self.events]


@dataclass(slots=True)
class _Category:
    name: str
    items: list[int]  # catalog positions, in popularity-rank order
    cum_weights: list[float]  # Zipf cumulative weights aligned with `items`
    successor: dict[int, int]  # hidden chain: catalog position -> next catalog position


def _zipf_cum_weights(n: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) ** _ZIPF_EXPONENT for rank in range(n)))


def _weighted_pick(rng: random.Random, items: list[int], cum_weights: list[float]) -> int:
    # bisect on cumulative weights: O(log n) instead of random.choices' setup per call.
    x = rng.random() * cum_weights[-1]
    return items[min(bisect.bisect_right(cum_weights, x), len(items) - 1)]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _build_catalog(
    rng: random.Random, n_items: int, n_categories: int
) -> tuple[list[CatalogItem], list[_Category]]:
    names: list[str] = []
    for c in range(n_categories):
        base = _CATEGORY_WORDS[c % len(_CATEGORY_WORDS)][0]
        generation = c // len(_CATEGORY_WORDS)
        names.append(base if generation == 0 else f"{base} {generation + 1}")

    # Round-robin assignment keeps category sizes within one of each other.
    members: list[list[int]] = [[] for _ in range(n_categories)]
    catalog: list[CatalogItem] = []
    for pos in range(n_items):
        c = pos % n_categories
        _, nouns, descriptors, (lo, hi) = _CATEGORY_WORDS[c % len(_CATEGORY_WORDS)]
        title = f"{rng.choice(_BRANDS)} {rng.choice(descriptors)} {rng.choice(nouns)}"
        # Log-uniform prices look more like a real catalog than uniform ones.
        price = round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 2)
        catalog.append(
            CatalogItem(item_id=f"sku-{pos:05d}", title=title, category=names[c], price=price)
        )
        members[c].append(pos)

    categories: list[_Category] = []
    for c, items in enumerate(members):
        by_popularity = items[:]
        rng.shuffle(by_popularity)
        chain = items[:]
        rng.shuffle(chain)  # independent of popularity on purpose
        successor = {chain[i]: chain[(i + 1) % len(chain)] for i in range(len(chain))}
        categories.append(
            _Category(
                name=names[c],
                items=by_popularity,
                cum_weights=_zipf_cum_weights(len(by_popularity)),
                successor=successor,
            )
        )
    return catalog, categories


def generate_shop(
    n_items: int = 1000,
    n_users: int = 500,
    n_categories: int = 12,
    sessions_per_user: tuple[int, int] = (4, 12),
    seed: int = 7,
) -> SyntheticShop:
    """Generate a deterministic synthetic shop (catalog + sorted event log).

    Args:
        n_items: Number of catalog items (SKUs "sku-00000" ...).
        n_users: Number of users ("user-0001" ...).
        n_categories: Number of categories; items are spread round-robin.
        sessions_per_user: Inclusive (min, max) number of sessions per user.
        seed: Seed for every random choice; same arguments give the same shop.

    Returns:
        The generated `SyntheticShop`; `events` are sorted by `ts`.

    Raises:
        ValueError: If sizes are not positive or `sessions_per_user` is not a valid range.
    """
    if n_items < 1 or n_users < 1 or n_categories < 1:
        raise ValueError("n_items, n_users and n_categories must be positive")
    if n_categories > n_items:
        raise ValueError("n_categories must not exceed n_items")
    lo_sessions, hi_sessions = sessions_per_user
    if lo_sessions < 1 or hi_sessions < lo_sessions:
        raise ValueError(f"invalid sessions_per_user range: {sessions_per_user!r}")

    rng = random.Random(seed)
    catalog, categories = _build_catalog(rng, n_items, n_categories)
    # Category appeal also Zipf-like, so some categories are globally more popular.
    category_ids = list(range(n_categories))
    category_appeal = [1.0 / (c + 1) ** 0.5 for c in category_ids]
    rng.shuffle(category_appeal)
    p_continue = _MEAN_EXTRA_STEPS / (1.0 + _MEAN_EXTRA_STEPS)

    # (ts, generation order, event) so the final sort is total and deterministic.
    keyed: list[tuple[float, int, ShopEvent]] = []
    order = 0
    for u in range(1, n_users + 1):
        user_id = f"user-{u:04d}"
        home_channel = rng.choice(CHANNELS)
        n_pref = min(n_categories, rng.randint(1, 3))
        preferred: list[int] = []
        while len(preferred) < n_pref:
            c = rng.choices(category_ids, weights=category_appeal)[0]
            if c not in preferred:
                preferred.append(c)
        pref_weights = [rng.random() + 0.2 for _ in preferred]

        n_sessions = rng.randint(lo_sessions, hi_sessions)
        starts = sorted(EPOCH_START + rng.random() * _PERIOD_S for _ in range(n_sessions))
        clock = EPOCH_START - 600.0  # so the first session may start right at EPOCH_START
        for start in starts:
            clock = max(clock + 600.0, start)  # sessions never overlap (>= 10 min apart)
            channel = home_channel if rng.random() < _P_PREFERRED_CHANNEL else rng.choice(CHANNELS)
            if rng.random() < _P_PREFERRED_CATEGORY:
                cat = categories[rng.choices(preferred, weights=pref_weights)[0]]
            else:
                cat = categories[rng.randrange(n_categories)]
            pos = _weighted_pick(rng, cat.items, cat.cum_weights)
            steps = 1
            while steps < _MAX_STEPS and rng.random() < p_continue:
                steps += 1
            for step in range(steps):
                item = catalog[pos]
                dwell_ms = int(rng.lognormvariate(math.log(15_000), 0.7))
                keyed.append(
                    (
                        clock,
                        order,
                        ShopEvent(
                            event_id=_uuid(rng),
                            user_id=user_id,
                            item_id=item.item_id,
                            event_type="browse",
                            ts=clock,
                            channel=channel,
                            dwell_ms=dwell_ms,
                        ),
                    )
                )
                order += 1
                clock += dwell_ms / 1000.0
                if rng.random() < _P_CLICK:
                    clock += rng.uniform(1.0, 5.0)
                    keyed.append(
                        (
                            clock,
                            order,
                            ShopEvent(
                                event_id=_uuid(rng),
                                user_id=user_id,
                                item_id=item.item_id,
                                event_type="click",
                                ts=clock,
                                channel=channel,
                            ),
                        )
                    )
                    order += 1
                    if rng.random() < _P_PURCHASE:
                        clock += rng.uniform(20.0, 120.0)  # checkout takes a while
                        keyed.append(
                            (
                                clock,
                                order,
                                ShopEvent(
                                    event_id=_uuid(rng),
                                    user_id=user_id,
                                    item_id=item.item_id,
                                    event_type="purchase",
                                    ts=clock,
                                    channel=channel,
                                    order_id=f"ord-{rng.getrandbits(48):012x}",
                                    quantity=rng.choices((1, 2, 3), weights=(0.8, 0.15, 0.05))[0],
                                    price=item.price,
                                ),
                            )
                        )
                        order += 1
                clock += rng.uniform(2.0, 30.0)  # think time before the next page
                if step == steps - 1:
                    break
                # Walk to the next item: mostly along the hidden chain.
                r = rng.random()
                if r < _P_CHAIN_NEXT:
                    pos = cat.successor[pos]
                elif r < _P_CHAIN_NEXT + _P_CHAIN_SKIP:
                    pos = cat.successor[cat.successor[pos]]
                elif r < _P_CHAIN_NEXT + _P_CHAIN_SKIP + _P_CATEGORY_JUMP:
                    cat = categories[rng.choices(preferred, weights=pref_weights)[0]]
                    pos = _weighted_pick(rng, cat.items, cat.cum_weights)
                else:
                    pos = _weighted_pick(rng, cat.items, cat.cum_weights)

    keyed.sort(key=lambda k: (k[0], k[1]))
    return SyntheticShop(catalog=catalog, events=[e for _, _, e in keyed], seed=seed)
