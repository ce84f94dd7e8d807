"""The live catalog: the ``items`` topic, read whole by every worker.

The shop's product feed arrives on the compacted ``items`` topic: key = item id, value
:class:`CatalogItem` (title, description, attributes, price, availability, blocked,
category); a tombstone (no value) retires the item for good (until a new record for it
arrives): it is hidden like an unavailable one, from lists and bundles alike, even
when the model's vocabulary still holds it. Like the item rules (see
``streams.rules``), items are keyed by item and events by user, so every worker reads
the whole topic itself (a :class:`~streams.rules.BroadcastReader`) and is not ready
(``/readyz``) before it has read up to the end offsets it found at start.

What a record does:

* ``available`` / ``blocked`` / ``category`` join the item rules
  (:class:`~streams.rules.ItemRules`, source ``catalog``): an item is hidden when the
  catalog *or* the merchandiser's ``item-rules`` hide it; the merchandiser's category
  wins over the catalog's.
* With a text encoder (``RECSTREAM_TEXT_ENCODER_DIR``), the item's text
  (``models.text_encoder.item_text`` of title, description and attributes) is embedded
  and upserted into the ``models.catalog.ItemTextIndex`` attached to the scorer, so a new item is
  recommendable through its text at once, without a re-export; an update replaces its
  vector, a tombstone removes it. A record whose text is unchanged (a stock flip, a
  price change) is not embedded again: the catalog keeps a hash of each item's text.
  Embedding runs in a thread of its own (never on the event loop, and not in the
  inference thread: a scored batch does not wait behind a chunk that takes 0.3 to
  1.3 s at the encoder's 50 to 200 texts/s), in chunks of :data:`EMBED_CHUNK`, each
  upserted into the index at once.

A record that is not a valid item goes to the dead-letter topic with its reason; the
worker goes on. When only its text fields are malformed, its ``available``,
``blocked`` and ``category`` still apply (:class:`PartialItem`) and the record is
dead-lettered for its text. ``price`` is validated and documented but not used for ranking.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from confluent_kafka import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.catalog import ItemTextIndex
from models.text_encoder import item_text
from streams.events import InvalidEvent, ReasonCode
from streams.intent import TextEncoder
from streams.rules import BroadcastReader, ItemRule, ItemRules

__all__ = [
    "EMBED_CHUNK",
    "ELIGIBILITY_FIELDS",
    "MAX_ITEM_BYTES",
    "RETIRED",
    "Catalog",
    "CatalogConsumer",
    "CatalogItem",
    "PartialItem",
    "TextSupport",
    "decode_item",
]

log = logging.getLogger("recstream.catalog")

#: A catalog record is a product page's worth of text at most.
MAX_ITEM_BYTES = 32 * 1024
#: Texts embedded per encoder call and index upsert. Not smaller: every upsert makes
#: the scorer rebuild its catalog view before its next batch.
EMBED_CHUNK = 64
#: The catalog's rule for an item it retired (a tombstone): never recommended. Not
#: "no rule": that would let an item of the model's vocabulary back into lists.
RETIRED = ItemRule(available=False)

Attribute = str | int | float | bool
#: An attribute's value as feeds send it: a value, several (``["red", "blue"]``) or none.
AttributeValue = Attribute | list[Attribute] | None
#: The fields that decide whether an item may be recommended (and its category): they
#: apply even when the record's text fields are malformed.
ELIGIBILITY_FIELDS = ("available", "blocked", "category")


class CatalogItem(BaseModel):
    """The value of an ``items`` record (key = item id)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    schema_version: Literal[1] = 1
    title: str = Field(min_length=1, max_length=1024, description="Product title.")
    description: str | None = Field(
        None, max_length=16_384, description="Free text describing the product."
    )
    attributes: dict[str, AttributeValue] | list[str] | None = Field(
        None,
        max_length=100,
        description="`{name: value}` (brand, colour...; a value may be a list or null) or a "
        "list of tags; part of the embedded text.",
    )
    price: float | None = Field(
        None, ge=0, le=1e9, description="Current unit price (a numeric string is accepted)."
    )
    available: bool = Field(True, description="False: out of stock, never recommended.")
    blocked: bool = Field(False, description="True: banned, never recommended.")
    category: str | None = Field(
        None, max_length=256, description="Category, for the per-list diversity cap."
    )

    @field_validator("price", mode="before")
    @classmethod
    def _numeric_string(cls, value: Any) -> Any:
        """``"12.5"`` as feeds often send it (checked as a number after this)."""
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @field_validator("price")
    @classmethod
    def _finite_price(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("price must be finite")
        return value

    def rule(self) -> ItemRule:
        """What the catalog says about the item's eligibility and category."""
        return ItemRule(available=self.available, blocked=self.blocked, category=self.category)

    def text(self) -> str:
        """The text embedded for the item (``models.text_encoder.item_text``); null
        attributes are left out, a list value is joined with commas."""
        attributes: dict[str, object] | list[str] | None
        if isinstance(self.attributes, dict):
            attributes = {
                k: ", ".join(str(x) for x in v) if isinstance(v, list) else v
                for k, v in self.attributes.items()
                if v is not None and v != []
            }
        else:
            attributes = self.attributes
        return item_text(self.title, self.description, attributes)


@dataclass(frozen=True, slots=True)
class PartialItem:
    """A record whose eligibility fields are valid but whose text fields are not.

    Its rule applies (a stock-out in a record with a malformed description must not
    be lost); the record goes to the dead-letter topic with ``invalid``, and the
    item's text (and vector) stays as its last valid record left it.
    """

    rule: ItemRule
    invalid: InvalidEvent


def decode_item(
    key: bytes | None, value: bytes | None
) -> CatalogItem | PartialItem | None | InvalidEvent:
    """Validate an ``items`` record: the item, its eligibility alone
    (:class:`PartialItem`: the text fields are malformed), ``None`` (a tombstone), or
    why not."""
    if not key:
        return InvalidEvent(
            code=ReasonCode.SCHEMA_VIOLATION, reason="a catalog record needs an item id key"
        )
    try:
        item_id = key.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidEvent(code=ReasonCode.INVALID_UTF8, reason="item id key is not UTF-8")
    if len(item_id) > 256:
        return InvalidEvent(
            code=ReasonCode.SCHEMA_VIOLATION, reason="item id key is over 256 characters"
        )
    if value is None:
        return None
    if len(value) > MAX_ITEM_BYTES:
        return InvalidEvent(
            code=ReasonCode.TOO_LARGE,
            reason=f"catalog record is {len(value)} bytes; the limit is {MAX_ITEM_BYTES}",
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return InvalidEvent(code=ReasonCode.INVALID_JSON, reason="catalog record is not UTF-8 JSON")
    if not isinstance(doc, dict):
        return InvalidEvent(
            code=ReasonCode.NOT_AN_OBJECT, reason="catalog record is no JSON object"
        )
    try:
        return CatalogItem.model_validate(doc, strict=True)
    except ValidationError as exc:
        invalid = InvalidEvent(code=ReasonCode.SCHEMA_VIOLATION, reason=_problems(exc))
        fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    if not fields or fields & {*ELIGIBILITY_FIELDS, "schema_version"}:
        return invalid
    try:
        rule = ItemRule.model_validate(
            {k: doc[k] for k in ELIGIBILITY_FIELDS if k in doc}, strict=True
        )
    except ValidationError:
        return invalid
    return PartialItem(
        rule,
        InvalidEvent(
            code=ReasonCode.SCHEMA_VIOLATION,
            reason=f"{_TEXT_NOT_APPLIED}: {invalid.reason}",
        ),
    )


_TEXT_NOT_APPLIED = "text not applied (availability, blocked, category applied)"


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
        for e in exc.errors(include_url=False)[:3]
    )


def _text_hash(text: str) -> int:
    """64-bit hash of an item's text (which record needs embedding again)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class TextSupport:
    """The worker's text side: the encoder and the catalog's text index."""

    encoder: TextEncoder
    index: ItemTextIndex


class Catalog:
    """What the worker knows of the catalog: which items it holds, whether it is loaded."""

    def __init__(self) -> None:
        self.items: set[str] = set()
        #: item -> hash of the text its vector was embedded from (unchanged: not again).
        self.text_hashes: dict[str, int] = {}
        #: True once the eligibility (rules) of every record up to the end offsets at
        #: start is published: scoring waits for this, not for the text.
        self.rules_loaded = False
        #: True once every partition was read up to its end offset at start and its
        #: text embedded (``/readyz``).
        self.loaded = False

    def __len__(self) -> int:
        return len(self.items)


class CatalogConsumer(BroadcastReader):
    """Reads the whole ``items`` topic into the rules, the catalog and the text index.

    Args:
        client_config: librdkafka connection settings.
        topic: the catalog topic.
        catalog: which items exist, and whether the topic was read to its end.
        rules: where availability, blocklist and categories go (source ``catalog``).
        dead_letter: ``(message, invalid)`` for a record that is no valid item.
        text: encoder, index and text rule; ``None``: text is not embedded.
        run_embedding: runs ``encode(texts)`` off the loop (the worker's embedding thread).
        on_applied: called with the number of records applied per batch (metrics).
    """

    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        catalog: Catalog,
        rules: ItemRules,
        dead_letter: Callable[[Message, InvalidEvent], None],
        text: TextSupport | None,
        run_embedding: Callable[[Callable[[], np.ndarray]], Awaitable[np.ndarray]],
        on_applied: Callable[[int], None] = lambda _n: None,
    ) -> None:
        super().__init__(client_config, topic)
        self.catalog = catalog
        self.rules = rules
        self._dead_letter = dead_letter
        self._text = text
        self._run_embedding = run_embedding
        self._on_applied = on_applied
        # item -> its latest text not embedded yet (None: drop its vector), in order.
        self._pending: dict[str, str | None] = {}
        self._in_flight: set[str] = set()
        self._embedding: asyncio.Future[None] | None = None

    async def handle_batch(self, messages: Sequence[Message]) -> None:
        """Apply a batch: rules published at once; the text queued for embedding.

        The reader does not wait for the embedding: the next poll (and so the end of
        the topic, where scoring may start, see :attr:`Catalog.rules_loaded`) is not
        held behind minutes of text at start-up. A background task embeds the queue
        (the latest text of each item) in chunks.
        """
        applied = 0
        for msg in messages:
            if msg.error():
                continue
            decoded = decode_item(msg.key(), msg.value())
            if isinstance(decoded, InvalidEvent):
                self._dead_letter(msg, decoded)
                self._passed(msg)
                continue
            item = (msg.key() or b"").decode()
            if isinstance(decoded, PartialItem):
                self._dead_letter(msg, decoded.invalid)
                self.rules.apply(item, decoded.rule, source="catalog", publish=False)
            elif decoded is None:
                self.catalog.items.discard(item)
                self.rules.apply(item, RETIRED, source="catalog", publish=False)
                self._queue(item, None)
            else:
                self.catalog.items.add(item)
                self.rules.apply(item, decoded.rule(), source="catalog", publish=False)
                self._queue(item, decoded.text())
            applied += 1
            self._passed(msg)
        # Bans first: they apply from the next scored batch, whatever the text.
        self.rules.publish()
        if not self.catalog.rules_loaded and self.at_end:
            self.catalog.rules_loaded = True
        self._on_applied(applied)
        if self._pending and (self._embedding is None or self._embedding.done()):
            self._embedding = asyncio.ensure_future(self._embed_pending())
        self._check_loaded(embedding_idle=self._embedding is None or self._embedding.done())

    def _queue(self, item: str, text: str | None) -> None:
        """Queue an item's latest text (``None``: drop its vector) unless unchanged."""
        if self._text is None:
            return
        if (
            text is not None
            and item not in self._in_flight
            and self.catalog.text_hashes.get(item) == _text_hash(text)
        ):
            self._pending.pop(item, None)  # an earlier, different text is stale
            return
        self._pending.pop(item, None)  # re-queued at the end: the latest goes last
        self._pending[item] = text

    def _check_loaded(self, *, embedding_idle: bool) -> None:
        if self.catalog.loaded or not self.at_end or self._pending or not embedding_idle:
            return
        self.catalog.loaded = True
        log.info("catalog loaded: %d items", len(self.catalog))

    async def embedded(self) -> None:
        """Wait until the queued text is embedded (tests, shutdown)."""
        while self._embedding is not None and not self._embedding.done():
            await asyncio.shield(self._embedding)

    async def _embed_pending(self) -> None:
        """Embed the queue in chunks of :data:`EMBED_CHUNK` until it is empty."""
        text = self._text
        assert text is not None  # queued only with text support
        hashes = self.catalog.text_hashes
        while self._pending:
            gone = [item for item, t in self._pending.items() if t is None]
            if gone:
                text.index.remove(gone)
                for item in gone:
                    hashes.pop(item, None)
                    del self._pending[item]
            chunk: list[tuple[str, str]] = []
            for item, t in self._pending.items():
                if t is not None:
                    chunk.append((item, t))
                    if len(chunk) == EMBED_CHUNK:
                        break
            if not chunk:
                break
            for item, _ in chunk:
                del self._pending[item]
            self._in_flight = {item for item, _ in chunk}
            encode = functools.partial(text.encoder.encode, [t for _, t in chunk])
            try:
                vectors = await self._run_embedding(encode)
                text.index.upsert([item for item, _ in chunk], vectors)
                hashes.update((item, _text_hash(t)) for item, t in chunk)
            except Exception:
                # Their rules still apply; their text waits for their next update.
                log.exception("embedding %d catalog items failed", len(chunk))
            finally:
                self._in_flight = set()
            self._on_applied(0)  # the embedded-items gauge
        self._check_loaded(embedding_idle=True)
