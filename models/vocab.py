"""Item vocabulary, popularity counts and per-user encoded timelines (no torch).

The first step of training: interactions -> item vocabulary (sorted external ids,
index 0 = padding) + per-user timelines of encoded (item, event type, channel) steps.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from models.encoding import CHANNEL_INDEX, EVENT_TYPE_INDEX, PAD_INDEX, vocab_index
from models.interactions import Interaction

__all__ = [
    "ItemVocab",
    "Step",
    "build_vocab",
    "group_timelines",
    "recent_popularity",
]


@dataclass(frozen=True, slots=True)
class ItemVocab:
    """Bidirectional external item id <-> model index mapping (index 0 = padding).

    Attributes:
        ids: External ids in index order; `ids[0]` is None (padding).
    """

    ids: tuple[str | None, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ids or self.ids[0] is not None:
            raise ValueError("ids[0] must be None (padding)")
        object.__setattr__(self, "index", vocab_index(self.ids))

    @property
    def n_items(self) -> int:
        """Number of real items (excluding padding)."""
        return len(self.ids) - 1

    def __len__(self) -> int:
        """Vocabulary size including the padding index."""
        return len(self.ids)

    def decode(self, index: int) -> str:
        """External id of a model index (raises KeyError for padding / out of range)."""
        if index <= 0 or index >= len(self.ids):
            raise KeyError(index)
        item = self.ids[index]
        assert item is not None  # guaranteed by the padding check above
        return item


# One encoded step: (item index, event type index, channel index).
Step = tuple[int, int, int]


def build_vocab(interactions: Sequence[Interaction]) -> tuple[ItemVocab, list[int]]:
    """Build the item vocabulary (sorted external ids) and per-index popularity counts.

    Sorting the ids makes the vocabulary independent of event order.

    Args:
        interactions: Training interactions.

    Returns:
        (vocab, popularity) where popularity[i] counts interactions with item index i.
    """
    counts = Counter(it.item_id for it in interactions)
    vocab = ItemVocab((None, *sorted(counts)))
    popularity = [0] + [counts[item] for item in vocab.ids[1:] if item is not None]
    return vocab, popularity


def recent_popularity(
    interactions: Sequence[Interaction], vocab: ItemVocab, fraction: float = 0.2
) -> dict[str, list[int]]:
    """Counts per item index over the newest `fraction` of interactions (by ts).

    What a brand-new user sees: what is popular *now*, overall ("all") and per channel
    (only channels present in the data). Works for any ts unit (a share of events, not
    a number of days).

    Args:
        interactions: Training interactions.
        vocab: Item vocabulary (counts are aligned with it; index 0 = 0).
        fraction: Share of the most recent interactions counted.

    Returns:
        {"all": counts, channel: counts, ...}.
    """
    ordered = sorted(range(len(interactions)), key=lambda i: (interactions[i].ts, i))
    recent = ordered[len(ordered) - max(1, int(len(ordered) * fraction)) :] if ordered else []
    out: dict[str, list[int]] = {"all": [0] * len(vocab)}
    for i in recent:
        it = interactions[i]
        idx = vocab.index.get(it.item_id)
        if idx is None:
            continue
        out["all"][idx] += 1
        out.setdefault(it.channel, [0] * len(vocab))[idx] += 1
    return out


def group_timelines(interactions: Sequence[Interaction], vocab: ItemVocab) -> dict[str, list[Step]]:
    """Group interactions per user, ordered by ts (ties keep input order), and encode.

    Items missing from `vocab` are skipped; unknown event types / channels map to 0.

    Args:
        interactions: Interactions in any order.
        vocab: Item vocabulary.

    Returns:
        user_id -> oldest-first list of (item, type, channel) indices.
    """
    per_user: dict[str, list[tuple[float, int, Step]]] = defaultdict(list)
    for order, it in enumerate(interactions):
        idx = vocab.index.get(it.item_id)
        if idx is None:
            continue
        step = (
            idx,
            EVENT_TYPE_INDEX.get(it.event_type, PAD_INDEX),
            CHANNEL_INDEX.get(it.channel, PAD_INDEX),
        )
        per_user[it.user_id].append((it.ts, order, step))
    return {
        user: [step for _, _, step in sorted(rows, key=lambda r: (r[0], r[1]))]
        for user, rows in per_user.items()
    }
