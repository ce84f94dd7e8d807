"""Bundles ("frequently bought together") in the stream: co-purchases, counts, bundles.

Three steps, each on its own topic so that every step is keyed where its state is:

1. **co-purchases** (user-keyed work, item-keyed output). When a purchase is folded
   into a user's profile, the purchase and the user's earlier purchases of the same
   order or within ``RECSTREAM_BUNDLE_WINDOW_S`` form pairs
   (``models.bundles.latest_pairs``). They go to the ``co-purchases`` topic, one record
   per anchor item (key = anchor, value :class:`CoPurchase`: its partners, the time,
   the purchase's ``event_id``). No user id leaves the profile. The purchase is acked
   only once these records are delivered, like its recommendation.
2. **counts** (item-keyed state). The ``count_co_purchases`` agent folds each record
   into the anchor's decayed, bounded partner counts (``models.bundles.CoPurchaseCounts``
   state in the ``bundle-counts`` table, changelogged like the profiles) and publishes
   the anchor's top partners to the compacted ``bundles`` topic (:class:`BundleRecord`):
   only partners of at least ``RECSTREAM_BUNDLE_MIN_SUPPORT`` distinct purchases whose
   decayed count is at least ``RECSTREAM_BUNDLE_MIN_SCORE``; an anchor left with none
   gets a tombstone.
   Exactly-once-ish: a purchase redelivered after a crash is paired again (its pairs
   are recomputed from the purchases up to its own time), and each anchor remembers
   ``(ts, hash)`` of the ``event_id`` s it counted within ``RECSTREAM_BUNDLE_DEDUP_HORIZON_S``
   of its newest (at most ``RECSTREAM_BUNDLE_DEDUP_MAX``), so a replayed record counts
   once however busy the item; a record at or before the newest one forgotten (the
   anchor's ``floor``) is not counted: it cannot be told from a replay.
3. **bundles** (read whole by every worker, like the item rules). Each list triggered by
   an interaction with an item carries that item's bundle, minus the user's purchases,
   hidden items and the item itself, its scores decayed to the event's time (below
   ``RECSTREAM_BUNDLE_MIN_SCORE``: not shown); items of the list that are in it get the
   reason ``bought_together``.

The model side (``CoPurchaseCounts``, ``latest_pairs``) lives in ``models.bundles``;
the worker passes them in as a :class:`CoPurchaseModel` (half-life and bound set).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import orjson
from confluent_kafka import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.bundles import CoPurchaseCounts
from streams.events import InvalidEvent, ReasonCode
from streams.profile import event_id_hash
from streams.rules import BroadcastReader

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_PARTNERS",
    "BundleRecord",
    "Bundles",
    "BundlesConsumer",
    "CoPurchase",
    "CoPurchaseModel",
    "bundle_bytes",
    "co_purchase_records",
    "decode_bundle",
    "decode_co_purchase",
    "fold_co_purchase",
    "publishable",
]

log = logging.getLogger("recstream.bundles")

#: Largest bundle or co-purchase record read, and written: the writers drop their
#: lightest items until a record fits (200 bundle items of 256-character ASCII ids take
#: about 60 KB; Kafka's default message limit is 1 MiB).
MAX_BUNDLE_BYTES = 256 * 1024
#: Most partners in one co-purchase record (``CoPurchase.partners``).
MAX_PARTNERS = 500

Id = Annotated[str, Field(min_length=1, max_length=256)]
#: ``(item_id, order_id, ts)`` of one purchase of one user (``models.bundles``).
UserPurchase = tuple[str, str | None, float]


@dataclass(frozen=True, slots=True)
class CoPurchaseModel:
    """The model side of bundles: ``models.bundles`` in the worker.

    Attributes:
        counts: a fresh, empty ``CoPurchaseCounts`` (half-life and bound set).
        latest_pairs: ``latest_pairs(purchases, window_s=...)``: the pairs the newest
            (last) purchase forms with the earlier ones, both directions.
    """

    counts: Callable[[], CoPurchaseCounts]
    latest_pairs: Callable[..., list[tuple[str, str, float]]]


class CoPurchase(BaseModel):
    """The value of a ``co-purchases`` record (key = the anchor item id)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    anchor_item_id: Id
    partners: list[Id] = Field(min_length=1, max_length=MAX_PARTNERS)
    ts: float = Field(description="Time of the purchase that formed the pairs, Unix seconds.")
    event_id: Id = Field(description="event_id of that purchase (counted once per anchor).")


class BundleItem(BaseModel):
    """One partner of a bundle."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    item_id: Id
    score: float = Field(ge=0, description="Decayed co-purchase count.")


class BundleRecord(BaseModel):
    """The value of a ``bundles`` record (key = the anchor item id)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    anchor_item_id: Id
    items: list[BundleItem] = Field(max_length=200, description="Heaviest first.")
    updated_ts: float = Field(description="Time of the latest co-purchase counted.")


T = TypeVar("T")


def _fitted(encode: Callable[[Sequence[T]], bytes], items: Sequence[T]) -> bytes:
    """``encode(items)``, dropping items from the end until it fits MAX_BUNDLE_BYTES."""
    n, out = len(items), encode(items)
    while len(out) > MAX_BUNDLE_BYTES and n > 1:
        n = n * MAX_BUNDLE_BYTES // len(out)  # < n: shrinks every round
        out = encode(items[: max(n, 1)])
    return out


def co_purchase_records(pairs: Sequence[tuple[str, str, float]], event_id: str) -> dict[str, bytes]:
    """The ``co-purchases`` records of one purchase: anchor -> value (partners grouped,
    at most the latest :data:`MAX_PARTNERS`, fewer if they do not fit
    :data:`MAX_BUNDLE_BYTES`)."""
    partners: dict[str, list[str]] = {}
    stamps: dict[str, float] = {}
    for anchor, partner, ts in pairs:
        partners.setdefault(anchor, []).append(partner)
        stamps[anchor] = ts

    def record(anchor: str) -> Callable[[Sequence[str]], bytes]:
        return lambda items: orjson.dumps(
            {
                "schema_version": 1,
                "anchor_item_id": anchor,
                "partners": list(items),
                "ts": stamps[anchor],
                "event_id": event_id,
            }
        )

    return {
        anchor: _fitted(record(anchor), items[-MAX_PARTNERS:]) for anchor, items in partners.items()
    }


def _decode(model: type[BaseModel], what: str, key: bytes | None, value: bytes | None) -> Any:
    if not key:
        return InvalidEvent(code=ReasonCode.SCHEMA_VIOLATION, reason=f"a {what} needs an item key")
    if value is None:
        return None
    if len(value) > MAX_BUNDLE_BYTES:
        return InvalidEvent(code=ReasonCode.TOO_LARGE, reason=f"{what} is {len(value)} bytes")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return InvalidEvent(code=ReasonCode.INVALID_JSON, reason=f"{what} is not UTF-8 JSON")
    if not isinstance(doc, dict):
        return InvalidEvent(code=ReasonCode.NOT_AN_OBJECT, reason=f"{what} is no JSON object")
    try:
        decoded = model.model_validate(doc)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "value" for e in exc.errors())
        return InvalidEvent(code=ReasonCode.SCHEMA_VIOLATION, reason=f"invalid fields: {fields}")
    if decoded.anchor_item_id.encode() != key:  # type: ignore[attr-defined]
        return InvalidEvent(
            code=ReasonCode.KEY_MISMATCH, reason=f"record key differs from the {what}'s anchor"
        )
    return decoded


def decode_co_purchase(key: bytes | None, value: bytes | None) -> CoPurchase | InvalidEvent:
    """Validate a ``co-purchases`` record (no tombstones on this topic)."""
    decoded = _decode(CoPurchase, "co-purchase", key, value)
    if decoded is None:
        return InvalidEvent(code=ReasonCode.EMPTY, reason="co-purchase record has no value")
    if isinstance(decoded, CoPurchase) and not math.isfinite(decoded.ts):
        return InvalidEvent(code=ReasonCode.INVALID_TIMESTAMP, reason="ts must be finite")
    return decoded  # type: ignore[no-any-return]


def decode_bundle(key: bytes | None, value: bytes | None) -> BundleRecord | None | InvalidEvent:
    """Validate a ``bundles`` record: the bundle, ``None`` (a tombstone), or why not."""
    return _decode(BundleRecord, "bundle", key, value)  # type: ignore[no-any-return]


def _seen(doc: dict[str, Any]) -> list[tuple[float, int]]:
    """An anchor's remembered ``(ts, event id hash)``, oldest first."""
    entries = doc.get("seen", [])
    last = float(doc.get("last", 0.0))
    # A bare hash: the state of a worker before the time horizon; its time is unknown
    # but no later than the anchor's newest co-purchase.
    return sorted(
        (float(e[0]), int(e[1])) if isinstance(e, list) else (last, int(e)) for e in entries
    )


def fold_co_purchase(
    stored: bytes | None,
    record: CoPurchase,
    counts: CoPurchaseCounts,
    *,
    horizon_s: float,
    cap: int,
) -> tuple[bytes | None, bool]:
    """Fold one co-purchase record into an anchor's stored counts, once per purchase.

    The anchor remembers ``(ts, hash)`` of the purchases it counted within
    ``horizon_s`` of its newest, at most ``cap`` of them; ``floor`` is the latest time
    it forgot. A record with a remembered hash, or from at or before ``floor`` (whose
    hash may have been forgotten), is not counted: redelivery is exact for records
    up to ``horizon_s`` behind the anchor's newest (``cap`` shortens that for items
    bought more than ``cap`` times within it).

    Returns:
        The new stored state and ``True``, or the stored state unchanged and ``False``
        when this purchase was (or may have been) counted for this anchor already.
    """
    anchor = record.anchor_item_id
    doc: dict[str, Any] = orjson.loads(stored) if stored else {}
    seen = _seen(doc)
    floor = float(doc.get("floor", -math.inf))
    digest = event_id_hash(record.event_id)
    if record.ts <= floor or any(h == digest for _, h in seen):
        return stored, False
    if doc:
        counts.from_dict(anchor, doc)
    for partner in dict.fromkeys(record.partners):
        if partner != anchor:
            counts.add(anchor, partner, record.ts)
    seen.append((record.ts, digest))
    seen.sort()
    cutoff = seen[-1][0] - horizon_s
    keep = next((n for n, (ts, _) in enumerate(seen) if ts >= cutoff), len(seen))
    keep = max(keep, len(seen) - cap)
    if keep:
        floor = max(floor, seen[keep - 1][0])
    state = dict(counts.to_dict(anchor))
    # Distinct purchases per partner (each record is one purchase, counted once), for
    # the minimum support; only the partners the bounded counts still hold.
    support = doc.get("support", {})
    for partner in dict.fromkeys(record.partners):
        if partner != anchor:
            support[partner] = int(support.get(partner, 0)) + 1
    state["support"] = {p: n for p, n in support.items() if p in state["partners"]}
    state["seen"] = [[ts, h] for ts, h in seen[keep:]]
    if math.isfinite(floor):
        state["floor"] = floor
    return orjson.dumps(state), True


def publishable(
    stored: bytes | None,
    anchor: str,
    counts: CoPurchaseCounts,
    *,
    n: int,
    min_support: int,
    min_score: float,
) -> tuple[list[tuple[str, float]], float]:
    """The partners an anchor's bundle may show, heaviest first, and its time.

    Only partners bought with the anchor in at least ``min_support`` distinct
    purchases (one shopper's single pair is never shown to everyone viewing the
    anchor), whose count decayed to the anchor's latest co-purchase is at least
    ``min_score``; at most ``n``. Empty: the anchor's record is a tombstone.
    """
    if not stored:
        return [], 0.0
    doc = orjson.loads(stored)
    counts.from_dict(anchor, doc)
    support: dict[str, int] = doc.get("support", {})
    ranked = counts.top(anchor, len(doc.get("partners", {})))
    kept = [(p, w) for p, w in ranked if support.get(p, 0) >= min_support and w >= min_score][:n]
    return kept, float(doc.get("last", 0.0))


def bundle_bytes(anchor: str, items: Sequence[tuple[str, float]], updated_ts: float) -> bytes:
    """Serialise a :class:`BundleRecord` (heaviest first; the lightest dropped until it
    fits :data:`MAX_BUNDLE_BYTES`)."""

    def encode(kept: Sequence[tuple[str, float]]) -> bytes:
        return orjson.dumps(
            {
                "schema_version": 1,
                "anchor_item_id": anchor,
                "items": [{"item_id": i, "score": round(s, 6)} for i, s in kept],
                "updated_ts": updated_ts,
            }
        )

    return _fitted(encode, items)


class Bundles:
    """Every item's latest published bundle, as read so far (anchor -> partners).

    Scores are decayed at read time from the record's ``updated_ts`` (half-life
    ``half_life_s``, as the counts): a bundle nobody bought into since fades, and a
    partner below ``min_score`` is no longer shown, whether or not a newer record
    (or the tombstone) has arrived yet.
    """

    def __init__(self, half_life_s: float = 14 * 86400.0, min_score: float = 0.05) -> None:
        self._bundles: dict[str, tuple[float, list[tuple[str, float]]]] = {}
        self.half_life_s = half_life_s
        self.min_score = min_score
        #: True once every partition was read up to its end offset at start.
        self.loaded = False

    def apply(self, anchor: str, record: BundleRecord | None) -> None:
        """Set (or, with ``None``, delete) an item's bundle."""
        if record is None or not record.items:
            self._bundles.pop(anchor, None)
        else:
            self._bundles[anchor] = (
                record.updated_ts,
                [(i.item_id, i.score) for i in record.items],
            )

    def for_item(
        self,
        anchor: str,
        excluded: frozenset[str],
        hidden: frozenset[str],
        size: int,
        now: float | None = None,
    ) -> list[tuple[str, float]]:
        """Up to ``size`` partners of ``anchor``, none in ``excluded`` or ``hidden``,
        their scores decayed to ``now`` (event time; ``None``: as published)."""
        found = self._bundles.get(anchor)
        if not found:
            return []
        updated_ts, partners = found
        age = 0.0 if now is None else max(0.0, now - updated_ts)
        factor = 0.5 ** (age / self.half_life_s)
        out = []
        for item, score in partners:
            decayed = score * factor
            if decayed < self.min_score:
                break  # heaviest first: the rest are lighter
            if item != anchor and item not in excluded and item not in hidden:
                out.append((item, decayed))
                if len(out) == size:
                    break
        return out

    def __len__(self) -> int:
        return len(self._bundles)


class BundlesConsumer(BroadcastReader):
    """Reads the whole ``bundles`` topic into :class:`Bundles`, then follows it."""

    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        bundles: Bundles,
        dead_letter: Callable[[Message, InvalidEvent], None],
        on_applied: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(client_config, topic)
        self.bundles = bundles
        self._dead_letter = dead_letter
        self._on_applied = on_applied

    async def handle_batch(self, messages: Sequence[Message]) -> None:
        """Apply a batch of bundle records."""
        for msg in messages:
            if msg.error():
                continue
            decoded = decode_bundle(msg.key(), msg.value())
            if isinstance(decoded, InvalidEvent):
                self._dead_letter(msg, decoded)
            else:
                self.bundles.apply((msg.key() or b"").decode(), decoded)
            self._passed(msg)
        self._on_applied()
        if not self.bundles.loaded and self.at_end:
            self.bundles.loaded = True
            log.info("bundles loaded: %d items", len(self.bundles))
