"""Business rules on items: availability, a blocklist and categories for a diversity cap.

The merchandiser's rules arrive on the compacted ``item-rules`` topic: key = item id,
value :class:`ItemRule` (``{"available": false}``, ``{"blocked": true}``,
``{"category": "lipstick"}``...), a tombstone (no value) deletes the item's rule.

Rules are keyed by item, events by user, so the two cannot be co-partitioned: every
worker needs every rule. Each worker therefore reads the whole topic itself (a
broadcast consumer: every partition assigned from offset 0, no consumer group, nothing
committed) into an in-memory :class:`ItemRules`, and is not ready (``/readyz``) before
it has read up to the end offsets it found at start. A rule takes effect from the next
scored batch after it is read: unavailable and blocked items join each request's
``exclude`` set, which the model masks before its top-K, so a list stays K long.

A record that is not a valid rule goes to the dead-letter topic with its reason; the
worker goes on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.diversity import cap_per_category
from models.scorer import Recommendation
from streams.events import InvalidEvent, ReasonCode

__all__ = ["ItemRule", "ItemRules", "RulesConsumer", "decode_rule", "diversify"]

log = logging.getLogger("recstream.rules")

#: Rules are small; anything bigger is not one.
MAX_RULE_BYTES = 4096
#: Tries of one record of a broadcast topic before it is skipped (see ``apply``).
RECORD_ATTEMPTS = 3


class ItemRule(BaseModel):
    """The value of an ``item-rules`` record (key = item id)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    available: bool = Field(True, description="False: out of stock, never recommended.")
    blocked: bool = Field(False, description="True: banned by the merchandiser, never recommended.")
    category: str | None = Field(
        None, max_length=256, description="Category, for the per-list diversity cap."
    )

    @property
    def hidden(self) -> bool:
        """Whether the item may not appear in any list."""
        return self.blocked or not self.available


def decode_rule(key: bytes | None, value: bytes | None) -> ItemRule | None | InvalidEvent:
    """Validate an ``item-rules`` record: the rule, ``None`` (a tombstone), or why not."""
    if not key:
        return InvalidEvent(code=ReasonCode.SCHEMA_VIOLATION, reason="a rule needs an item id key")
    if value is None:
        return None
    if len(value) > MAX_RULE_BYTES:
        return InvalidEvent(code=ReasonCode.TOO_LARGE, reason=f"rule is {len(value)} bytes")
    try:
        key.decode("utf-8")
        doc = orjson.loads(value)
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return InvalidEvent(code=ReasonCode.INVALID_JSON, reason="rule is not UTF-8 JSON")
    if not isinstance(doc, dict):
        return InvalidEvent(code=ReasonCode.NOT_AN_OBJECT, reason="rule is no JSON object")
    try:
        return ItemRule.model_validate(doc, strict=True)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "value" for e in exc.errors())
        return InvalidEvent(code=ReasonCode.SCHEMA_VIOLATION, reason=f"invalid fields: {fields}")


#: Where a rule came from: the merchandiser's ``item-rules`` or the ``items`` catalog.
RuleSource = Literal["rules", "catalog"]


class ItemRules:
    """The current rules of every item, as read so far, from two sources.

    The ``item-rules`` topic (the merchandiser) and the ``items`` catalog (the shop's
    product feed) both say whether an item is available, blocked and of which
    category. They combine so that neither can undo the other's ban: an item is
    hidden when either source hides it, and its category is the merchandiser's when
    set, else the catalog's.

    ``hidden`` and ``categories`` are replaced (never mutated) on change, so the
    inference thread can read them without a lock. :meth:`apply` publishes at once;
    a reader applying a batch passes ``publish=False`` and calls :meth:`publish` once.
    """

    def __init__(self) -> None:
        self._sources: dict[RuleSource, dict[str, ItemRule]] = {"rules": {}, "catalog": {}}
        self._hidden: set[str] = set()
        self._categories: dict[str, str] = {}
        self._changed = False
        self.hidden: frozenset[str] = frozenset()
        self.categories: dict[str, str] = {}
        #: True once every partition was read up to its end offset at start.
        self.loaded = False

    def apply(
        self,
        item: str,
        rule: ItemRule | None,
        *,
        source: RuleSource = "rules",
        publish: bool = True,
    ) -> None:
        """Set (or, with ``None``, delete) an item's rule from ``source``."""
        rules = self._sources[source]
        if rule is None:
            rules.pop(item, None)
        else:
            rules[item] = rule
        merchant, catalog = self._sources["rules"].get(item), self._sources["catalog"].get(item)
        hidden = (merchant is not None and merchant.hidden) or (
            catalog is not None and catalog.hidden
        )
        category = merchant.category if merchant is not None else None
        if category is None and catalog is not None:
            category = catalog.category
        if hidden != (item in self._hidden):
            self._changed = True
            if hidden:
                self._hidden.add(item)
            else:
                self._hidden.discard(item)
        if category != self._categories.get(item):
            self._changed = True
            if category is None:
                del self._categories[item]
            else:
                self._categories[item] = category
        if publish:
            self.publish()

    def publish(self) -> None:
        """Make the changes applied so far visible to the next scored batch."""
        if self._changed:
            self.hidden = frozenset(self._hidden)
            self.categories = dict(self._categories)
            self._changed = False

    def __len__(self) -> int:
        """Items with a rule of the ``item-rules`` topic."""
        return len(self._sources["rules"])


def diversify(rec: Recommendation, categories: dict[str, str], cap: int, k: int) -> Recommendation:
    """Keep at most ``cap`` items of one category, best first, up to ``k`` items
    (`models.diversity.cap_per_category`, the rule the offline evaluation measures).

    Items without a category are not capped. The list is shorter than ``k`` only when
    the candidates do not hold enough items of other categories. Each kept item keeps
    its own reason (``reasons`` stays aligned with ``items``).
    """
    if rec.reasons is None:
        items = cap_per_category(rec.items, lambda entry: categories.get(entry[0]), cap, k)
        return Recommendation(items=items, strategy=rec.strategy)
    kept = cap_per_category(
        zip(rec.items, rec.reasons, strict=True),
        lambda entry: categories.get(entry[0][0]),
        cap,
        k,
    )
    return Recommendation(
        items=[item for item, _ in kept],
        strategy=rec.strategy,
        reasons=[reason for _, reason in kept],
    )


class BroadcastReader:
    """Reads a whole item-keyed topic from the beginning, then follows it.

    Every partition is assigned from offset 0 without joining a consumer group (no
    offsets committed): each worker needs every item. :attr:`at_end` turns true once
    each partition was read up to the end offset it had at start.

    Args:
        client_config: librdkafka connection settings.
        topic: the topic.
    """

    def __init__(self, client_config: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": f"recstream-{topic}-{uuid.uuid4().hex[:8]}",  # never joins
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 50,
            }
        )
        self._ends: dict[int, int] = {}
        self._assigned = False
        self._last_passed: Message | None = None

    @property
    def at_end(self) -> bool:
        """Whether the topic was read up to the end offsets found at start."""
        return self._assigned and not self._ends

    def _assign(self) -> None:
        meta = self._consumer.list_topics(self.topic, timeout=30)
        partitions = sorted(meta.topics[self.topic].partitions)
        for p in partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=30
            )
            if high > 0:
                self._ends[p] = high
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._assigned = True

    def _poll(self) -> list[Message]:
        return list(self._consumer.consume(500, 0.2))

    def _passed(self, msg: Message) -> None:
        """Note that ``msg`` was handled (the start's end offsets)."""
        self._last_passed = msg
        partition, offset = msg.partition(), msg.offset()
        if (
            partition is not None
            and offset is not None
            and self._ends.get(partition, 0) <= offset + 1
        ):
            self._ends.pop(partition, None)

    async def handle_batch(self, messages: Sequence[Message]) -> None:
        """Apply one batch of records (on the event loop)."""
        raise NotImplementedError

    async def run(self) -> None:
        """Consume until cancelled (polls in a thread; state changes on the loop)."""
        while True:
            try:
                if not self._assigned:
                    await asyncio.to_thread(self._assign)
                    await self.handle_batch([])  # an empty topic is read at once
                messages = await asyncio.to_thread(self._poll)
                if messages:
                    await self.apply(messages)
            except Exception:  # never let a side topic stop the worker
                log.exception("reading %s failed; retrying in 5 s", self.topic)
                await asyncio.sleep(5)

    async def apply(self, messages: Sequence[Message], retry_s: float = 1.0) -> None:
        """:meth:`handle_batch`, resumed after the last record handled when it raises.

        The consumer's position is already past the whole batch: a record skipped now
        is never applied. So the rest of the batch is retried (a full producer queue
        clears); a record that fails :data:`RECORD_ATTEMPTS` times in a row is logged
        and skipped, and the records after it are still applied.
        """
        pending = [m for m in messages if not m.error()]
        failures = 0
        while True:
            self._last_passed = None
            try:
                await self.handle_batch(pending)
                return
            except Exception:
                last = self._last_passed
                done = next((n + 1 for n, m in enumerate(pending) if m is last), 0)
                failures = failures + 1 if done == 0 else 1
                culprit = pending[done] if done < len(pending) else None
                if failures >= RECORD_ATTEMPTS and culprit is None:
                    log.exception("applying %s failed after its records", self.topic)
                    return  # every record was applied; the next poll publishes again
                if failures >= RECORD_ATTEMPTS and culprit is not None:
                    log.exception(
                        "skipping %s[%s]@%s: it failed %d times",
                        self.topic,
                        culprit.partition(),
                        culprit.offset(),
                        failures,
                    )
                    done, failures = done + 1, 0
                else:
                    log.exception("applying %s failed; retrying the rest of its batch", self.topic)
                    await asyncio.sleep(retry_s)
                pending = pending[done:]

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


class RulesConsumer(BroadcastReader):
    """Reads the whole ``item-rules`` topic into :class:`ItemRules`, then follows it.

    Args:
        client_config: librdkafka connection settings.
        topic: the rules topic.
        rules: where the rules go.
        dead_letter: ``(message, invalid)`` for a record that is no valid rule.
        on_applied: called with the number of records applied per poll (metrics).
    """

    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        rules: ItemRules,
        dead_letter: Callable[[Message, InvalidEvent], None],
        on_applied: Callable[[int], None] = lambda _n: None,
    ) -> None:
        super().__init__(client_config, topic)
        self.rules = rules
        self._dead_letter = dead_letter
        self._on_applied = on_applied

    def handle(self, messages: Sequence[Message]) -> int:
        """Apply a batch of records; returns how many rules changed."""
        applied = 0
        for msg in messages:
            if msg.error():
                continue
            decoded = decode_rule(msg.key(), msg.value())
            if isinstance(decoded, InvalidEvent):
                self._dead_letter(msg, decoded)
            else:
                self.rules.apply((msg.key() or b"").decode(), decoded, publish=False)
                applied += 1
            self._passed(msg)
        self.rules.publish()
        if not self.rules.loaded and not self._ends:
            self.rules.loaded = True
            log.info(
                "item rules loaded: %d rules, %d items hidden",
                len(self.rules),
                len(self.rules.hidden),
            )
        return applied

    async def handle_batch(self, messages: Sequence[Message]) -> None:
        """Apply a batch of records and report how many (metrics)."""
        self._on_applied(self.handle(messages))
