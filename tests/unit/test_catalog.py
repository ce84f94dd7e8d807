"""The live catalog (``items`` topic) without a broker: records, rules, text, readiness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from models.catalog import ItemTextIndex
from models.scorer import HistoryItem, Intent, Recommendation
from streams.bundles import BundleItem, BundleRecord
from streams.catalog import (
    EMBED_CHUNK,
    Catalog,
    CatalogConsumer,
    CatalogItem,
    PartialItem,
    TextSupport,
    decode_item,
)
from streams.events import InvalidEvent, ReasonCode
from streams.rules import ItemRule, ItemRules
from tests.unit.test_pipeline_inprocess import NOW, Harness, click, harness, send, until
from tests.unit.test_rules import message
from tests.unit.text_fakes import FakeEncoder, fake_text_support

__all__ = ["harness"]  # the fixture, imported for these tests


def item(**fields: Any) -> bytes:
    return orjson.dumps({"title": "Matte red lipstick", **fields})


@pytest.mark.parametrize(
    ("key", "value", "code", "says"),
    [
        (None, item(), ReasonCode.SCHEMA_VIOLATION, "item id key"),
        (b"\xff", item(), ReasonCode.INVALID_UTF8, "not UTF-8"),
        (b"sku-1", b"{nope", ReasonCode.INVALID_JSON, "JSON"),
        (b"sku-1", b"[]", ReasonCode.NOT_AN_OBJECT, "object"),
        (b"sku-1", item(available="no"), ReasonCode.SCHEMA_VIOLATION, "available"),
        (b"sku-1", item(category=7, title=""), ReasonCode.SCHEMA_VIOLATION, "category"),
        (b"sku-1", item(schema_version=2), ReasonCode.SCHEMA_VIOLATION, "schema_version"),
        (b"sku-1", item(description="x" * 40_000), ReasonCode.TOO_LARGE, "bytes"),
    ],
)
def test_bad_catalog_records_are_rejected_with_a_clear_reason(
    key: bytes | None, value: bytes, code: ReasonCode, says: str
) -> None:
    decoded = decode_item(key, value)
    assert isinstance(decoded, InvalidEvent)
    assert decoded.code is code and says in decoded.reason


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (orjson.dumps({"price": 3, "available": False}), "title"),
        (item(title=" ", available=False), "title"),
        (item(price=-1, available=False), "price"),
        (item(price="twelve", available=False), "price"),
        (item(attributes={"a": {"b": 1}}, available=False), "attributes"),
    ],
)
def test_malformed_text_fields_still_apply_the_records_eligibility(value: bytes, says: str) -> None:
    decoded = decode_item(b"sku-1", value)
    assert isinstance(decoded, PartialItem)
    assert decoded.rule == ItemRule(available=False)
    assert decoded.invalid.code is ReasonCode.SCHEMA_VIOLATION and says in decoded.invalid.reason


def test_common_feed_shapes_decode_numeric_string_prices_null_and_list_attributes() -> None:
    decoded = decode_item(
        b"sku-1", item(price="12.5", attributes={"size": None, "colour": ["red", "blue"]})
    )
    assert isinstance(decoded, CatalogItem) and decoded.price == 12.5
    assert decoded.text() == "Matte red lipstick. colour: red, blue"


def test_a_stock_out_in_a_record_with_malformed_text_is_applied_and_dead_lettered() -> None:
    catalog, rules, dead, text = Catalog(), ItemRules(), [], fake_text_support()
    consumer = consumer_for(catalog, rules, dead, text)

    async def main() -> None:
        consumer._assigned = True
        await consumer.handle_batch([message(b"a", item(), 0, 0)])
        await consumer.embedded()
        await consumer.handle_batch([message(b"a", item(available=False, price=-3), 0, 1)])
        await consumer.embedded()

    try:
        asyncio.run(main())
    finally:
        consumer.close()
    assert rules.hidden == {"a"} and "a" in text.index  # the last valid text stays
    assert [d.code for d in dead] == [ReasonCode.SCHEMA_VIOLATION]
    assert "availability, blocked, category applied" in dead[0].reason


def test_a_catalog_record_decodes_and_a_tombstone_retires() -> None:
    decoded = decode_item(
        b"sku-1",
        item(description="Long wear", attributes={"brand": "Acme"}, price=9, category="lips"),
    )
    assert decoded == CatalogItem(
        title="Matte red lipstick",
        description="Long wear",
        attributes={"brand": "Acme"},
        price=9.0,
        category="lips",
    )
    assert decoded.rule() == ItemRule(category="lips")
    assert decode_item(b"sku-1", item(attributes=["vegan", "matte"])) is not None
    assert decode_item(b"sku-1", None) is None


def test_catalog_and_item_rules_combine_a_ban_from_either_hides() -> None:
    rules = ItemRules()
    rules.apply("a", ItemRule(available=False, category="shop"), source="catalog")
    rules.apply("a", ItemRule(category="merchant"))  # the merchandiser's category wins
    assert rules.hidden == {"a"} and rules.categories == {"a": "merchant"}
    rules.apply("a", ItemRule(category="shop"), source="catalog")  # back in stock
    assert rules.hidden == frozenset()
    rules.apply("b", ItemRule(blocked=True))
    rules.apply("b", ItemRule(), source="catalog")  # the catalog cannot lift a ban
    assert rules.hidden == {"b"}
    rules.apply("a", None)  # the merchandiser's rule deleted: the catalog's category
    assert rules.categories == {"a": "shop"}
    rules.apply("a", None, source="catalog")
    assert rules.categories == {} and len(rules) == 1


def consumer_for(
    catalog: Catalog,
    rules: ItemRules,
    dead: list[InvalidEvent],
    text: Any,
    threads: list[str] | None = None,
) -> CatalogConsumer:
    async def off_loop(work: Callable[[], np.ndarray]) -> np.ndarray:
        return await asyncio.to_thread(work)

    return CatalogConsumer(
        {"bootstrap.servers": "127.0.0.1:1"},
        "items",
        catalog,
        rules,
        lambda _m, invalid: dead.append(invalid),
        text,
        off_loop,
    )


def test_the_catalog_consumer_embeds_text_off_the_loop_and_retires_tombstones() -> None:
    catalog, rules, dead, text = Catalog(), ItemRules(), [], fake_text_support()
    encoder, index = text.encoder, text.index
    assert isinstance(encoder, FakeEncoder) and isinstance(index, ItemTextIndex)
    consumer = consumer_for(catalog, rules, dead, text)

    async def main() -> None:
        consumer._assigned, consumer._ends = True, {0: 3}  # what _assign found at start
        await consumer.handle_batch(
            [
                message(b"new", item(title="Cherry gloss", category="lips"), 0, 0),
                message(b"gone", item(title="Old mascara", available=False), 0, 1),
            ]
        )
        assert not catalog.loaded  # its text is not embedded yet
        await consumer.embedded()
        assert set(index.snapshot().item_ids) == {"new", "gone"} and rules.hidden == {"gone"}
        assert not catalog.loaded  # not at the end yet
        await consumer.handle_batch([message(b"gone", None, 0, 2), message(b"bad", b"[", 0, 3)])
        await consumer.embedded()

    try:
        asyncio.run(main())
    finally:
        consumer.close()
    assert catalog.loaded and catalog.items == {"new"}
    assert set(index.snapshot().item_ids) == {"new"} and rules.hidden == {"gone"}  # retired
    assert rules.categories == {"new": "lips"}
    assert [d.code for d in dead] == [ReasonCode.INVALID_JSON]
    assert encoder.calls == [["Cherry gloss", "Old mascara"]]
    assert "MainThread" not in encoder.threads  # embedded in a worker thread
    assert np.allclose(index.vector("new"), encoder.encode(["Cherry gloss"])[0])


def test_catalog_text_is_embedded_in_chunks_and_without_an_encoder_only_rules_apply() -> None:
    catalog, rules, dead, text = Catalog(), ItemRules(), [], fake_text_support()
    consumer = consumer_for(catalog, rules, dead, text)
    plain = consumer_for(Catalog(), ItemRules(), [], None)
    records = [message(f"i{n}".encode(), item(), 0, n) for n in range(EMBED_CHUNK + 5)]

    async def main() -> None:
        consumer._assigned = plain._assigned = True
        await consumer.handle_batch(records)
        await consumer.embedded()
        await plain.handle_batch(records[:2])
        await plain.embedded()

    try:
        asyncio.run(main())
    finally:
        consumer.close()
        plain.close()
    assert isinstance(text.encoder, FakeEncoder)
    assert [len(c) for c in text.encoder.calls] == [EMBED_CHUNK, 5]
    assert len(text.index) == EMBED_CHUNK + 5
    assert plain.catalog.items == {"i0", "i1"} and plain.catalog.loaded


class CatalogScorer:
    """Ranks sku-0..sku-5 minus the exclude sets; remembers the index it was given."""

    provider = "cpu"

    def __init__(self, version: str) -> None:
        self.model_version = version
        self.attached: Any = None
        self.excludes: list[set[str]] = []

    def attach_catalog(self, index: Any) -> None:
        self.attached = index

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
        *,
        intents: Sequence[Intent | None] | None = None,
        hidden: Collection[str] = frozenset(),
    ) -> list[Recommendation]:
        exclude = [set(e) | set(hidden) for e in exclude]
        self.excludes.extend(set(e) for e in exclude)
        ranked = [(f"sku-{i}", 6.0 - i) for i in range(6)]
        return [
            Recommendation([p for p in ranked if p[0] not in e][:k], "sequential") for e in exclude
        ]


def test_the_text_index_is_attached_to_every_scorer_and_catalog_bans_mask_lists() -> None:
    from streams.app import create_app
    from streams.config import StreamConfig, WebConfig
    from tests.unit.test_pipeline_inprocess import FakeSink

    text = fake_text_support()
    first, reloaded = CatalogScorer("m1"), CatalogScorer("m2")
    config = StreamConfig(app_id="catalog-attach", store="memory://", web=WebConfig(enabled=False))
    app = create_app(config, first, output=FakeSink(), text=text)  # type: ignore[arg-type]
    assert first.attached is text.index
    app.pipeline.set_scorer(reloaded)  # type: ignore[arg-type]
    assert reloaded.attached is text.index
    assert app.pipeline.text_encoder is text.encoder
    assert not app.pipeline.side_topics_loaded  # the catalog is not read yet
    app.pipeline.rules.loaded = True
    app.pipeline.catalog.loaded = True
    assert not app.pipeline.side_topics_loaded  # the bundles are not read yet
    app.pipeline.bundles.loaded = True
    assert app.pipeline.side_topics_loaded


def test_an_item_the_catalog_marks_unavailable_leaves_the_next_list(harness: Harness) -> None:
    h = harness
    scorer = CatalogScorer("m1")
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        h.pipeline.rules.apply("sku-0", ItemRule(available=False), source="catalog")
        await send(agent, "clicks", click("e2"), offset=1)
        await until(lambda: len(h.recommendations) == 2)

    h.run(body)
    first, second = ([i["item_id"] for i in r.json()["items"]] for r in h.recommendations)
    assert first[0] == "sku-0" and "sku-0" not in second and len(second) == 5
    assert "sku-0" in scorer.excludes[-1]


def test_a_retired_vocab_item_stays_out_of_lists_and_bundles(harness: Harness) -> None:
    """available:false, then a tombstone: the item is gone for good, not back again."""
    h = harness
    scorer = CatalogScorer("m1")  # sku-0 is in the model's vocabulary
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    h.pipeline.bundles.apply(
        "sku-1",
        BundleRecord(
            anchor_item_id="sku-1",
            items=[BundleItem(item_id="sku-0", score=3.0), BundleItem(item_id="sku-2", score=1.0)],
            updated_ts=NOW,
        ),
    )
    consumer = consumer_for(h.pipeline.catalog, h.pipeline.rules, [], None)

    async def body(agent: Any) -> None:
        consumer._assigned = True
        await consumer.handle_batch([message(b"sku-0", item(available=False), 0, 0)])
        await consumer.handle_batch([message(b"sku-0", None, 0, 1)])  # retired
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)

    try:
        h.run(body)
    finally:
        consumer.close()
    doc = h.recommendations[0].json()
    assert "sku-0" not in [i["item_id"] for i in doc["items"]] and len(doc["items"]) == 5
    assert [b["item_id"] for b in doc["bundle"]["items"]] == ["sku-2"]
    assert "sku-0" in h.pipeline.rules.hidden and "sku-0" not in h.pipeline.catalog.items


class BlockingEncoder(FakeEncoder):
    """A fake encoder that waits for :attr:`release` (a slow catalog embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not self.release.wait(10):
            raise TimeoutError("never released")
        return super().encode(texts)


def test_scoring_waits_for_the_catalogs_bans_but_not_for_its_text(harness: Harness) -> None:
    h = harness
    scorer = CatalogScorer("m1")
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    encoder = BlockingEncoder()
    text = TextSupport(encoder=encoder, index=ItemTextIndex(encoder.dim))
    catalog, rules = h.pipeline.catalog, h.pipeline.rules
    consumer = consumer_for(catalog, rules, [], text)

    async def body(agent: Any) -> None:
        # The worker started a catalog reader that has not read the topic yet.
        h.pipeline._catalog_task = asyncio.get_running_loop().create_future()
        await send(agent, "clicks", click("e1"), offset=0)
        await asyncio.sleep(0.3)
        assert h.recommendations == []  # held: the bans are not read yet
        consumer._assigned, consumer._ends = True, {0: 1}
        await consumer.handle_batch([message(b"sku-0", item(available=False), 0, 0)])
        await until(lambda: len(h.recommendations) == 1)  # while the text still waits
        assert catalog.rules_loaded and not catalog.loaded and "sku-0" not in text.index
        encoder.release.set()
        await consumer.embedded()
        assert catalog.loaded and "sku-0" in text.index
        h.pipeline._catalog_task.cancel()

    try:
        h.run(body)
    finally:
        encoder.release.set()
        consumer.close()
    items = [i["item_id"] for i in h.recommendations[0].json()["items"]]
    assert "sku-0" not in items and len(items) == 5


def test_scoring_is_not_held_by_an_empty_catalog_or_rules_topic(harness: Harness) -> None:
    h = harness
    catalog_reader = consumer_for(h.pipeline.catalog, h.pipeline.rules, [], None)

    async def body(agent: Any) -> None:
        loop = asyncio.get_running_loop()
        h.pipeline._rules_task = loop.create_future()
        h.pipeline._catalog_task = loop.create_future()
        h.pipeline.rules.loaded = True  # an empty item-rules topic
        catalog_reader._assigned = True  # what _assign found: no partition with data
        await catalog_reader.handle_batch([])
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        h.pipeline._rules_task.cancel()
        h.pipeline._catalog_task.cancel()

    try:
        h.run(body)
    finally:
        catalog_reader.close()
    assert h.pipeline.catalog.rules_loaded and h.pipeline.catalog.loaded


def test_a_record_whose_text_is_unchanged_is_not_embedded_again() -> None:
    catalog, rules, text = Catalog(), ItemRules(), fake_text_support()
    encoder = text.encoder
    assert isinstance(encoder, FakeEncoder)
    consumer = consumer_for(catalog, rules, [], text)

    async def main() -> None:
        consumer._assigned = True
        await consumer.handle_batch([message(b"a", item(price=5), 0, 0)])
        await consumer.embedded()
        # A stock flip and a price change: same text, rules applied, nothing embedded.
        await consumer.handle_batch([message(b"a", item(available=False, price=6), 0, 1)])
        await consumer.embedded()
        assert rules.hidden == {"a"}
        await consumer.handle_batch([message(b"a", item(title="Cherry gloss"), 0, 2)])
        await consumer.embedded()
        await consumer.handle_batch([message(b"a", None, 0, 3)])  # retired: vector gone
        await consumer.embedded()
        await consumer.handle_batch([message(b"a", item(title="Cherry gloss"), 0, 4)])
        await consumer.embedded()

    try:
        asyncio.run(main())
    finally:
        consumer.close()
    assert encoder.calls == [["Matte red lipstick"], ["Cherry gloss"], ["Cherry gloss"]]
    assert "a" in text.index and rules.hidden == frozenset()


def test_a_scored_batch_does_not_wait_behind_catalog_embedding(harness: Harness) -> None:
    h = harness
    release = threading.Event()
    threads: list[str] = []

    def slow_chunk() -> np.ndarray:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return np.zeros((1, 2), dtype=np.float32)

    async def body(agent: Any) -> None:
        embedding = asyncio.ensure_future(h.pipeline._in_embedding_thread(slow_chunk))
        await until(lambda: threads != [])
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)  # while the chunk still runs
        assert not embedding.done()
        release.set()
        await embedding

    try:
        h.run(body)
    finally:
        release.set()
    assert threads[0].startswith("embedding")


def test_the_catalogs_end_is_reached_without_waiting_for_its_text() -> None:
    """At start-up the bans of every batch apply while the first batch's text embeds."""
    encoder = BlockingEncoder()
    text = TextSupport(encoder=encoder, index=ItemTextIndex(encoder.dim))
    catalog, rules = Catalog(), ItemRules()
    consumer = consumer_for(catalog, rules, [], text)

    async def main() -> None:
        consumer._assigned, consumer._ends = True, {0: 2}
        await consumer.handle_batch([message(b"a", item(title="Cherry gloss"), 0, 0)])
        await consumer.handle_batch([message(b"b", item(available=False), 0, 1)])
        assert catalog.rules_loaded and rules.hidden == {"b"} and len(text.index) == 0
        encoder.release.set()
        await consumer.embedded()

    try:
        asyncio.run(main())
    finally:
        encoder.release.set()
        consumer.close()
    assert catalog.loaded and set(text.index.snapshot().item_ids) == {"a", "b"}
