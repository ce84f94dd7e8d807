"""The scoring agent: input events -> profile update -> batched scoring -> output.

Per input record, in offset order (:meth:`Pipeline.take`; the records come from the
consumer's fetch loop a fetched batch at a time through the batch feed,
``streams._faust.BatchFeed``, or from the agent's Faust stream with
``RECSTREAM_BATCH_FEED=false``; either way with the record as Faust's current event):

1. decode and validate (:func:`streams.events.decode_event`); a bad record goes to
   the dead-letter topic with its reason and original bytes, and is acked;
2. fold the event into the user's profile in the ``profiles`` table (inside stream
   iteration, so the write reaches the changelog); a replayed ``event_id`` is not
   applied twice;
3. queue a scoring request with a snapshot of the history and the purchased items.

An interaction with an item of a list recently recommended to the user (remembered
in the profile, see ``streams.profile``) counts as a hit
(``recstream_recommendation_hits_total``) in step 2.

The :class:`~streams.batcher.MicroBatcher` scores queued requests in batches (split
by A/B arm, each part scored by its arm's model) and produces one recommendation list
per event, and remembers the list in the user's profile (a second table write, made
with the event as Faust's current event so it goes to the event's partition and its
changelog record holds the event's ack). Acks are manual (see
``streams._faust.manual_ack_events``): an input offset is acked only after every
record it caused (its recommendation or dead letter, and its profile's changelog
record) has been delivered by librdkafka, so a committed offset always has its
outputs and its state change durably written.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from faust import current_event

from models.diversity import CANDIDATE_POOL
from models.experiment import CANDIDATE, CONTROL, NO_EXPERIMENT, Experiment
from models.scorer import Intent, Recommendation, Scorer
from streams._faust import (
    BatchFeed,
    FetchWaitApp,
    as_current_event,
    manual_ack_events,
    rocksdb_partitions,
)
from streams.acks import InOrderAcks
from streams.batcher import MicroBatcher
from streams.bundles import (
    Bundles,
    BundlesConsumer,
    CoPurchaseModel,
    bundle_bytes,
    co_purchase_records,
    decode_co_purchase,
    fold_co_purchase,
    publishable,
)
from streams.catalog import Catalog, CatalogConsumer, TextSupport
from streams.control import ErasureRequest, ProfileExpiry, decode_control
from streams.events import (
    Event,
    EventType,
    InvalidEvent,
    PurchaseEvent,
    ReasonCode,
    SearchEvent,
    decode_event,
    decode_search,
)
from streams.intent import TextEncoder, decayed_weight, make_intent, pack, stored_vector
from streams.messages import dead_letter_bytes, erasure_audit_bytes, recommendation_dict
from streams.metrics import Metrics, Tally
from streams.output import OutputProducer, OutputSink
from streams.privacy import ERASED_PREFIX, UserKeys, UserRefs
from streams.profile import (
    Profile,
    apply_event,
    apply_search,
    find_hit,
    remember_intent,
    remember_latest,
    remember_list,
)
from streams.rules import ItemRules, RulesConsumer, diversify
from streams.tables import ProfileTable

if TYPE_CHECKING:
    import faust
    from faust.types import EventT, StreamT, TableT

    from streams.config import StreamConfig

__all__ = ["Pipeline", "ScoreRequest"]

log = logging.getLogger("recstream.agents")


@dataclass(slots=True)
class ScoreRequest:
    """One event waiting for its recommendation."""

    event: EventT[Any]
    decoded: Event | SearchEvent
    user: str  # the user's key in state and outputs (the id, or its pseudonym)
    history: list[tuple[str, str, str]]
    exclude: frozenset[str]
    purchased: frozenset[str] = frozenset()
    model_version: str = ""
    arm: str = CONTROL
    experiment: str = NO_EXPERIMENT
    # The search intent sent to the scorer, if any, and the time of its search.
    intent: Intent | None = None
    intent_ts: float | None = None
    # A search's query, embedded in the inference thread (then dropped; never stored),
    # and its vector once embedded (remembered in the profile after scoring).
    query: str | None = None
    query_vector: np.ndarray | None = None
    # The user's profile as this event left it, written to the table once the list is
    # out (see Pipeline._pending); None: already written.
    pending: PendingProfile | None = None


@dataclass(slots=True, eq=False)
class PendingProfile:
    """A user's decoded profile with updates not yet written to the profiles table.

    Events fold into it as they arrive; it is written (one RocksDB put, one changelog
    record) when a scored batch holding the user's events is delivered, after their
    lists are remembered in it. ``waiting`` counts the user's requests in flight.
    """

    profile: Profile
    waiting: int = 0


#: A popular list's items are there for one reason.
_POPULAR: tuple[str, None] = ("popular", None)


def _last_activity(document: dict[str, Any]) -> float:
    """A profile's latest event time, or an erasure marker's erasure time."""
    if "erased_at" in document:
        return float(document["erased_at"])
    return float(document["last_seen"])


class Pipeline:
    """Wires topics, the profiles table, the scorer and the batcher into one agent.

    Args:
        app: the Faust app the agent and the input topics belong to.
        config: resolved stream settings.
        scorer: the model ranking items.
        profiles: the profiles table.
        metrics: where counts and timings go.
        output: where recommendations, dead letters and changelog records are
            written; a librdkafka :class:`~streams.output.OutputProducer` on
            ``config.kafka`` by default (tests pass an in-memory sink).
        text: the text encoder (search queries embedded in the inference thread,
            catalog text in an embedding thread) and the catalog's text index attached
            to every scorer;
            ``None``: searches are accepted and counted but carry no intent, and the
            catalog's text is not embedded.
        co_purchases: the model side of bundles (``models.bundles``); ``None`` (or
            ``RECSTREAM_BUNDLE_ENABLED=false``): purchases are not paired or counted
            (bundles on the ``bundles`` topic are still added to lists).
        bundle_counts: the per-item co-purchase counts table (with ``co_purchases``).
    """

    def __init__(
        self,
        app: faust.App,
        config: StreamConfig,
        scorer: Scorer,
        profiles: ProfileTable,
        metrics: Metrics,
        output: OutputSink | None = None,
        text: TextSupport | None = None,
        co_purchases: CoPurchaseModel | None = None,
        bundle_counts: TableT[Any, Any] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.scorer = scorer
        # A/B experiment: (experiment, candidate scorer), swapped as one reference.
        self.experiment: tuple[Experiment, Scorer] | None = None
        self.profiles = profiles
        self.metrics = metrics
        names = config.topics
        self._input_types: dict[str, EventType] = names.inputs()
        self._user_ref = UserRefs(
            config.privacy.pseudonymize_users, config.privacy.pseudonym_key.get_secret_value()
        )
        self.users = UserKeys(
            config.data_privacy.user_key.get_secret_value(),
            config.privacy.pseudonym_key.get_secret_value(),
        )
        self.acks = InOrderAcks()
        self.rules = ItemRules()
        self._rules_task: asyncio.Future[None] | None = None
        self._started = False  # the batcher and the output pump
        self._bans_ready = False  # see _hold_for_bans
        self.text = text
        self.text_encoder: TextEncoder | None = text.encoder if text is not None else None
        self.catalog = Catalog()
        self._catalog_task: asyncio.Future[None] | None = None
        self.bundles = Bundles(config.bundles.half_life_s, config.bundles.min_score)
        # user -> (time, vector) of the searches of the last scored batch.
        self._recent_searches: dict[str, tuple[float, np.ndarray]] = {}
        # State key -> the profile of a user with events in flight, folded in but not
        # yet written: the next event of the user reads it instead of the table, and
        # the write waits until a batch with the user's events is delivered (one put
        # and one changelog record per user per batch instead of two per event).
        self._pending: dict[str, PendingProfile] = {}
        # Events whose acks also wait for the changelog record being written now.
        self._riders: Sequence[EventT[Any]] = ()
        self._bundles_task: asyncio.Future[None] | None = None
        enabled = config.bundles.enabled and bundle_counts is not None
        self.co_purchases = co_purchases if enabled else None
        self.bundle_counts = bundle_counts
        # Co-purchase records, keyed (and so partitioned) by anchor item like the
        # counts table's changelog.
        self.co_purchase_topic = app.topic(
            names.co_purchases, key_serializer="raw", value_serializer="raw"
        )
        self._attach_catalog(scorer)
        # Events, searches and erasure requests, co-partitioned by user id.
        self.input_topic = app.topic(
            *self._input_types,
            names.searches,
            names.user_erasure,
            key_serializer="raw",
            value_serializer="raw",
        )
        if output is None:
            output = OutputProducer(
                config.kafka.client_config(),
                on_error=lambda _err: self.metrics.produce_errors.inc(),
            )
        self.output: OutputSink = output
        # One inference thread: batches are scored in order; the event loop keeps
        # decoding and updating profiles while a batch runs.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        # Catalog text gets a thread of its own: a scored batch must not wait behind a
        # chunk of it (up to ~1 s); onnxruntime and tokenizers release the GIL.
        self._embedding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")
        self.batcher: MicroBatcher[ScoreRequest, Recommendation] = MicroBatcher(
            self._score,
            self._deliver,
            max_batch=config.scoring.max_batch,
            max_wait_s=config.scoring.max_wait_ms / 1000.0,
            executor=self._executor,
            inline=not config.scoring.inference_thread,
        )
        if config.scoring.changelog_producer == "librdkafka":
            for table in (profiles, bundle_counts):
                if isinstance(table, ProfileTable):
                    table.changelog_writer = self._write_changelog
        # Per-event counts go to tallies (plain floats), published once per batch.
        stage = self.metrics.stage_seconds
        self._consumed = {t: Tally(self.metrics.events_consumed.labels(t.value)) for t in EventType}
        self._searches = Tally(self.metrics.events_consumed.labels("search"))
        self._recommended: dict[str, Tally] = {}
        self._lists: dict[tuple[str, str, str], Tally] = {}
        self._hits: dict[tuple[str, str, str, str], Tally] = {}
        self._updates = Tally(self.metrics.profile_updates)
        self._duplicates = Tally(self.metrics.duplicate_events)
        self._stage_decode = Tally(stage.labels("decode"))
        self._stage_profile = Tally(stage.labels("profile"))
        self._stage_produce = Tally(stage.labels("produce"))
        self._tallies = [
            *self._consumed.values(),
            self._searches,
            self._updates,
            self._duplicates,
            self._stage_decode,
            self._stage_profile,
            self._stage_produce,
        ]
        self._stage_inference = stage.labels("inference")
        self.metrics.model_info.info(
            {"model_version": scorer.model_version, "provider": scorer.provider}
        )

    def state_key(self, user_id: str) -> str:
        """The key of a user's state (profile) in the table: the id, or its pseudonym."""
        return self.users.state(user_id)

    def _attach_catalog(self, scorer: Scorer) -> None:
        """Give ``scorer`` the catalog's text index (cold items, search intents).

        Scorers without catalog support (models exported before it, fakes) are
        served as they are.
        """
        attach = getattr(scorer, "attach_catalog", None)
        if attach is not None and self.text is not None:
            attach(self.text.index)

    def prepare_scorer(self, scorer: Scorer) -> None:
        """Attach the catalog to a newly loaded ``scorer`` and build its catalog view now
        (the ridge map of cold items included), in the caller's thread: the reloader
        calls it in its loading thread, before the swap."""
        self._attach_catalog(scorer)
        prepare = getattr(scorer, "prepare_catalog", None)
        if prepare is not None and self.text is not None:
            prepare()

    def set_scorer(self, scorer: Scorer) -> None:
        """Serve with ``scorer`` from the next batch on (hot reload)."""
        self._attach_catalog(scorer)
        self.scorer = scorer
        self.metrics.model_info.info(
            {"model_version": scorer.model_version, "provider": scorer.provider}
        )

    def set_experiment(self, experiment: Experiment | None, candidate: Scorer | None) -> None:
        """Serve ``experiment``'s candidate arm with ``candidate`` (``None``: no experiment).

        Users are assigned an arm as their events arrive; a batch in flight finishes
        with the scorers it started with.
        """
        if candidate is not None:
            self._attach_catalog(candidate)
        self.experiment = (
            (experiment, candidate) if experiment is not None and candidate is not None else None
        )

    def register(self) -> None:
        """Register the ``score_user_events`` (and ``count_co_purchases``) agents on the app.

        With ``RECSTREAM_BATCH_FEED`` (the default) the agent's records reach
        :meth:`take` from the consumer's fetch loop (:class:`streams._faust.BatchFeed`).
        """
        self.app.agent(self.input_topic, name="score_user_events")(self.score_user_events)
        if self.config.consumer.batch_feed and isinstance(self.app, FetchWaitApp):
            self.app.batch_feed = BatchFeed(
                self.app, frozenset(self.input_topic.topics), self._take_fed
            )
            log.info("input records reach the scoring agent through the batch feed")
        if self.co_purchases is not None:
            self.app.agent(self.co_purchase_topic, name="count_co_purchases")(
                self.count_co_purchases
            )

    async def score_user_events(self, stream: StreamT[Any]) -> None:
        """Agent body: consume all three input topics, one event at a time."""
        self._start()
        try:
            # With the batch feed (streams._faust, 9) the records come through
            # take() from the fetch loop instead, and this stream stays empty.
            async for event in manual_ack_events(stream):
                await self.take(event)
        finally:
            await self.batcher.stop()
            await self.output.stop()

    def _start(self) -> None:
        self.batcher.start()
        self.output.start()
        self._started = True

    async def _take_fed(self, event: EventT[Any]) -> None:
        # The feed can deliver before the agent's body first ran (_start is idempotent).
        if not self._started:
            self._start()
        await self.take(event)

    async def take(self, event: EventT[Any]) -> None:
        """Handle one input record (the agent's stream or the batch feed calls this,
        in offset order, with ``event`` as Faust's current event); it is acked once
        everything it caused is delivered."""
        # Back-pressure: while librdkafka's queue is full (a slow or absent broker)
        # the output backlog must not grow without bound.
        await self.output.wait_for_room()
        self.acks.track(event)
        try:
            await self._handle(event)
        except Exception as exc:  # never let one record stop the worker
            log.exception(
                "unexpected error on %s[%d]@%d",
                event.message.topic,
                event.message.partition,
                event.message.offset,
            )
            await self._dead_letter(
                event,
                InvalidEvent(code=ReasonCode.PROCESSING_ERROR, reason=repr(exc)[:500]),
            )

    async def _handle(self, event: EventT[Any]) -> None:
        msg = event.message
        event_type = self._input_types.get(msg.topic)
        if event_type is None and msg.topic == self.config.topics.user_erasure:
            await self._control(event)
            return
        if event_type is None and msg.topic == self.config.topics.searches:
            await self._search(event)
            return
        if event_type is None:
            await self._dead_letter(
                event, InvalidEvent(code=ReasonCode.UNKNOWN_TOPIC, reason=f"topic {msg.topic!r}")
            )
            return
        self._consumed[event_type].add()
        t0 = time.perf_counter()
        decoded = decode_event(event_type, msg.value, msg.key)
        t1 = time.perf_counter()
        self._stage_decode.add(t1 - t0)
        if isinstance(decoded, InvalidEvent):
            await self._dead_letter(event, decoded)
            return
        user = self.users.state(decoded.user_id)
        if self._erased_before(decoded):
            # An event from before the user's erasure (a replay, a late record) must
            # not bring the user back: acked, nothing written.
            self.metrics.events_of_erased_users.inc()
            self.acks.done(event)
            return
        entry = self._hold(user)
        profile = entry.profile
        if apply_event(profile, decoded, self.config.limits):
            self._updates.add()
            if profile.recs:
                hit = find_hit(profile, decoded, self.config.feedback.window_s)
                if hit is not None:
                    hit_experiment = hit[5] if len(hit) > 5 else NO_EXPERIMENT
                    self._count_hit(event_type.value, hit[1], hit[2], hit_experiment)
        else:
            self._duplicates.add()
        # Written (once the list is out, _deliver) even for a replayed event: after a
        # crash the local RocksDB can hold an update whose changelog record never left
        # the producer; rewriting the profile re-sends it, so the changelog (the
        # durable copy) converges.
        if isinstance(decoded, PurchaseEvent) and self.co_purchases is not None:
            self._emit_co_purchases(event, profile, decoded, self.co_purchases)
        self._stage_profile.add(time.perf_counter() - t1)
        await self._submit(event, decoded, user, entry)

    async def _search(self, event: EventT[Any]) -> None:
        """A search: fold its id and time into the profile, then score like an event.

        The query is embedded with the batch (``_score``), and the vector kept in the
        profile once the list is out (``_remember``). Without a text encoder a search
        only updates the profile: it is acked without a list.
        """
        msg = event.message
        self._searches.add()
        decoded = decode_search(msg.value, msg.key)
        if isinstance(decoded, InvalidEvent):
            await self._dead_letter(event, decoded)
            return
        if self._erased_before(decoded):
            self.metrics.events_of_erased_users.inc()
            self.acks.done(event)
            return
        user = self.users.state(decoded.user_id)
        entry = self._hold(user)
        if apply_search(entry.profile, decoded, self.config.limits):
            self._updates.add()
        else:
            self._duplicates.add()
        # Written even for a replay (see _handle).
        if self.text_encoder is None:
            # No encoder, no intent: its list would be the user's last one again, so
            # no scoring pass and no list; acked once the profile's changelog is out.
            entry.waiting += 1  # released at once: written, and forgotten if alone
            self._release(user, entry, [event])
            self.acks.done(event)
            self._flush_metrics()  # no delivered batch will publish the counts
            return
        await self._submit(event, decoded, user, entry, query=decoded.query)

    async def _submit(
        self,
        event: EventT[Any],
        decoded: Event | SearchEvent,
        user: str,
        entry: PendingProfile,
        *,
        query: str | None = None,
    ) -> None:
        """Queue the event for scoring; its profile is written once its list is out."""
        entry.waiting += 1
        try:
            if not self._bans_ready:
                await self._hold_for_bans()
            experiment = self.experiment
            profile = entry.profile
            # A search is scored with its own query (embedded with the batch), not the
            # last one.
            intent = None if isinstance(decoded, SearchEvent) else self._intent(profile, decoded.ts)
            history = profile.history()
            purchased = profile.purchased_items()
            request = ScoreRequest(
                event,
                decoded,
                user,
                history,
                self._excluded(purchased, history),
                purchased,
                arm=CONTROL if experiment is None else experiment[0].arm(decoded.user_id),
                experiment=NO_EXPERIMENT if experiment is None else experiment[0].id,
                intent=intent[0] if intent is not None else None,
                intent_ts=intent[1] if intent is not None else None,
                query=query,
                pending=entry,
            )
        except BaseException:
            # Not queued: write the update now, as if its batch had been delivered.
            self._release(user, entry, [event])
            raise
        await self.batcher.submit(request)

    # -- profiles not yet written ---------------------------------------------------------

    def _hold(self, user: str) -> PendingProfile:
        """The user's profile to fold an event into: the one still waiting to be
        written if the user has events in flight, else the table's."""
        entry = self._pending.get(user)
        if entry is None:
            entry = self._pending[user] = PendingProfile(Profile.from_json(self.profiles.get(user)))
        return entry

    def _release(self, user: str, entry: PendingProfile, events: Sequence[EventT[Any]]) -> None:
        """``events`` (the user's requests holding ``entry``) are out: write the profile
        once, each event's ack waiting for the record; forget it when none is left.

        Nothing is written when ``entry`` is no longer the user's (erased meanwhile).
        """
        if self._pending.get(user) is not entry:
            return
        entry.waiting -= len(events)
        if entry.waiting <= 0:
            del self._pending[user]
        self._write_pending(user, entry, events)

    def _write_pending(
        self, user: str, entry: PendingProfile, events: Sequence[EventT[Any]]
    ) -> None:
        """One table write (RocksDB and one changelog record) whose delivery every event
        of ``events`` waits for; written in the last one's partition context."""
        if not events:
            return
        self._riders = events[:-1]
        try:
            with as_current_event(events[-1]):
                self.profiles.put(user, entry.profile.to_json())
        finally:
            self._riders = ()

    @property
    def bans_loaded(self) -> bool:
        """Whether the item rules and the catalog's eligibility, where read here, were
        read to their start's end (not the catalog's text: that may take minutes)."""
        return (self._rules_task is None or self.rules.loaded) and (
            self._catalog_task is None or self.catalog.rules_loaded
        )

    async def _hold_for_bans(self) -> None:
        """Hold the first scoring until :attr:`bans_loaded`: a list scored before would
        hold banned or unavailable items. An empty or absent side topic is loaded as
        soon as its reader found its (no) partitions, so this never waits for data that
        will not come."""
        if not self.bans_loaded:
            log.info("holding scoring until the item rules and the catalog are read")
            while not self.bans_loaded:
                await asyncio.sleep(0.05)
        self._bans_ready = True

    def _intent(self, profile: Profile, ts: float) -> tuple[Intent, float] | None:
        """The profile's latest search as an intent decayed to ``ts`` and the search's
        time, or ``None``."""
        if profile.intent is None:
            return None
        encoder = self.text_encoder
        found = stored_vector(profile.intent, encoder.dim if encoder is not None else None)
        if found is None:
            return None  # another encoder's (or no encoder now): not comparable
        return self._decayed(found[1], found[0], ts)

    def _decayed(
        self, vector: np.ndarray, search_ts: float, ts: float
    ) -> tuple[Intent, float] | None:
        """A search's intent decayed from ``search_ts`` to ``ts``; ``None`` below the floor."""
        search = self.config.search
        weight = decayed_weight(ts - search_ts, search.half_life_s)
        if weight < search.min_weight:
            return None
        return make_intent(vector, weight), search_ts

    def _carry_searches(self, batch: Sequence[ScoreRequest]) -> None:
        """Give a search's intent to the same user's later events in this batch and the
        next one (inference thread, after the batch's queries are embedded).

        Their profiles were read before the search's vector was remembered (that is
        written once its list is out, ``_remember``), so without this the first events
        after a search would be scored without it. Only the last batch's searches are
        kept here, keyed by the user's state key, never the query text.
        """
        previous, current = self._recent_searches, {}
        for req in batch:
            ts = req.decoded.ts
            if req.query_vector is not None:
                current[req.user] = (ts, req.query_vector)
                continue
            if isinstance(req.decoded, SearchEvent):
                continue
            found = current.get(req.user) or previous.get(req.user)
            if found is None or found[0] > ts or (req.intent_ts or -np.inf) >= found[0]:
                continue
            decayed = self._decayed(found[1], found[0], ts)
            if decayed is not None:
                req.intent, req.intent_ts = decayed
        self._recent_searches = current

    def _embed_queries(self, batch: Sequence[ScoreRequest]) -> None:
        """Embed the batch's search queries in one encoder call (inference thread)."""
        encoder = self.text_encoder
        pending = [req for req in batch if req.query is not None]
        if encoder is None or not pending:
            return
        try:
            vectors = encoder.encode([req.query or "" for req in pending])
        except Exception:
            # The lists still go out, without the intent; the events are not lost.
            log.exception("embedding %d search queries failed", len(pending))
            return
        for req, vector in zip(pending, vectors, strict=True):
            req.query = None  # the text is not kept beyond this point
            req.query_vector = vector
            req.intent = make_intent(vector, 1.0)

    def _excluded(
        self, purchased: frozenset[str], history: Sequence[tuple[str, str, str]]
    ) -> frozenset[str]:
        """The user's own items a list must not hold (`ScoringConfig.history_policy`)."""
        policy = self.config.scoring.history_policy
        if policy == "model":
            return frozenset()
        if policy == "exclude-history":
            return purchased | {item for item, _, _ in history}
        return purchased

    def _emit_co_purchases(
        self, event: EventT[Any], profile: Profile, purchase: PurchaseEvent, model: CoPurchaseModel
    ) -> None:
        """Pair a purchase with the user's earlier ones; one record per anchor item.

        Also for a replayed purchase (its pairs may never have been delivered before a
        crash): the pairs are recomputed from the purchases up to its own time, and the
        counts agent counts each purchase once per anchor (by ``event_id``).
        """
        earlier: list[tuple[str, str | None, float]] = [
            (str(p[0]), str(p[2]) if len(p) > 2 else None, float(p[1]))
            for p in profile.purchased
            if p[0] != purchase.item_id and float(p[1]) <= purchase.ts
        ]
        if not earlier:
            return
        newest = (purchase.item_id, purchase.order_id, purchase.ts)
        pairs = model.latest_pairs([*earlier, newest], window_s=self.config.bundles.window_s)
        topic = self.config.topics.co_purchases
        for anchor, value in co_purchase_records(pairs, purchase.event_id).items():
            self.acks.expect(event)
            self.output.produce(
                topic, anchor.encode(), value, functools.partial(self._delivered, event)
            )

    def _score(self, batch: Sequence[ScoreRequest]) -> Sequence[Recommendation]:
        # One model per arm for the whole batch, even if a reload swaps them meanwhile.
        scorer, experiment = self.scorer, self.experiment
        candidate = experiment[1] if experiment is not None else None
        experiment_id = experiment[0].id if experiment is not None else NO_EXPERIMENT
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(batch):
            if req.experiment != experiment_id:
                # The experiment ended or changed since the event arrived: the arm of
                # the experiment the batch is scored under.
                req.experiment = experiment_id
                req.arm = CONTROL if experiment is None else experiment[0].arm(req.decoded.user_id)
            groups.setdefault(req.arm, []).append(i)
        self._embed_queries(batch)
        self._carry_searches(batch)
        recs: list[Recommendation | None] = [None] * len(batch)
        # The rules as read so far, for the whole batch: hidden items are masked by the
        # model before its top-K (lists stay K long); categories cap the list after.
        hidden = self.rules.hidden
        top_k, cap = self.config.scoring.top_k, self.config.scoring.category_cap
        categories = self.rules.categories if cap > 0 else {}
        for arm, indices in groups.items():
            arm_scorer = candidate if arm == CANDIDATE and candidate is not None else scorer
            started = time.perf_counter()
            histories = [batch[i].history for i in indices]
            excludes = [batch[i].exclude for i in indices]
            k = top_k * CANDIDATE_POOL if categories else top_k
            intents = [batch[i].intent for i in indices]
            results = arm_scorer.recommend(
                histories,
                excludes,
                k,
                intents=intents if any(i is not None for i in intents) else None,
                hidden=hidden,
            )
            if categories:
                results = [diversify(rec, categories, cap, top_k) for rec in results]
            elapsed = time.perf_counter() - started
            self.metrics.inference_seconds.observe(elapsed)
            self._stage_inference.inc(elapsed)
            self.metrics.batch_size.observe(len(indices))
            for i, rec in zip(indices, results, strict=True):
                recs[i] = rec
                batch[i].model_version = arm_scorer.model_version
        return [rec for rec in recs if rec is not None]

    async def _deliver(
        self, batch: Sequence[ScoreRequest], results: Sequence[Recommendation] | BaseException
    ) -> None:
        if isinstance(results, BaseException):
            # The events still changed their profiles (their dead letters say why no
            # list came): written first, as for a delivered batch.
            self._write_batch(batch)
            for req in batch:
                await self._dead_letter(
                    req.event,
                    InvalidEvent(
                        code=ReasonCode.PROCESSING_ERROR,
                        reason=f"scoring failed: {results!r}"[:500],
                    ),
                )
            return
        started = time.perf_counter()
        now = time.time()
        hidden, size = self.rules.hidden, self.config.bundles.size
        outgoing: list[tuple[ScoreRequest, Recommendation, bytes, bool]] = []
        for req, rec in zip(batch, results, strict=True):
            ev = req.decoded
            bundle = None
            if not isinstance(ev, SearchEvent) and len(self.bundles):
                partners = self.bundles.for_item(ev.item_id, req.purchased, hidden, size, ev.ts)
                bundle = (ev.item_id, partners) if partners else None
            message = recommendation_dict(
                user_id=req.user,
                items=rec.items,
                reasons=self._reasons(rec, bundle),
                bundle=bundle,
                model_version=req.model_version,
                arm=req.arm,
                strategy=rec.strategy,
                trigger_event_id=ev.event_id,
                trigger_event_type=ev.type,
                event_ts=ev.ts,
                produced_ts=now,
                schema_version=self.config.scoring.output_schema_version,
            )
            outgoing.append((req, rec, orjson.dumps(message), self._remember(req, rec, message)))
        # The profiles first (each user's once), then the lists: every record an event
        # waits for is queued before any delivery report can ack it.
        self._write_batch(batch)
        for req, rec, value, kept in outgoing:
            key = req.user.encode()
            self.output.produce(
                self.config.topics.recommendations,
                key,
                value,
                functools.partial(self._delivered, req.event),
            )
            if kept:
                # The compacted latest-list topic: the event's ack waits for it too.
                # Not for a user erased while the list was scored (it would outlive
                # the erasure's tombstone there).
                self.acks.expect(req.event)
                self.output.produce(
                    self.config.topics.recommendations_latest,
                    key,
                    value,
                    functools.partial(self._delivered, req.event),
                )
            counter = self._recommended.get(rec.strategy)
            if counter is None:
                counter = self._recommended[rec.strategy] = Tally(
                    self.metrics.recommendations.labels(rec.strategy)
                )
                self._tallies.append(counter)
            counter.add()
            self._count_list(req.model_version, req.arm, req.experiment)
            record_ts = req.event.message.timestamp
            if record_ts:
                self.metrics.event_to_recommendation_seconds.observe(max(0.0, now - record_ts))
        self._stage_produce.add(time.perf_counter() - started)
        self._flush_metrics()

    @staticmethod
    def _reasons(
        rec: Recommendation,
        bundle: tuple[str, Sequence[tuple[str, float]]] | None,
    ) -> list[tuple[str, str | None] | None] | None:
        """The ``reason`` of each item of the message, aligned with ``rec.items``.

        An item of the trigger item's bundle is there because it is bought with it
        (``bought_together``, naming the trigger), unless the user's search put it
        there (``matches_search`` says more about this list); the others keep the
        scorer's reason (``Recommendation.reasons``, kept aligned by the category cap).
        """
        reasons: list[tuple[str, str | None] | None] | None
        if rec.reasons is not None:
            reasons = [(str(r.code), r.item_id) for r in rec.reasons]
        elif rec.strategy == "popular":
            reasons = [_POPULAR] * len(rec.items)
        else:
            reasons = None
        if bundle is not None:
            anchor, partners = bundle
            together = {item for item, _score in partners}
            if reasons is None:
                reasons = [None] * len(rec.items)
            for n, (item, _score) in enumerate(rec.items):
                reason = reasons[n]
                if item in together and (reason is None or reason[0] != "matches_search"):
                    reasons[n] = ("bought_together", anchor)
        return reasons

    def _remember(self, req: ScoreRequest, rec: Recommendation, message: dict[str, Any]) -> bool:
        """Remember the list in the user's profile: the latest list (for the lookup
        API) and, for later hits on it, the last ``RECSTREAM_FEEDBACK_LISTS``.

        The profile is the one waiting to be written (``_pending``; other events of
        the user may have updated it since), written by :meth:`_write_batch`.

        Returns:
            ``False`` when the profile is gone: the user was erased meanwhile (nothing
            is written, so the erasure stands).
        """
        entry = req.pending
        if entry is None or self._pending.get(req.user) is not entry:
            return False
        ev = req.decoded
        try:
            profile = entry.profile
            remember_latest(profile, message)
            if req.query_vector is not None:
                vector = req.query_vector
                remember_intent(profile, ev.ts, pack(vector), int(vector.shape[-1]))
            remember_list(
                profile,
                ev.ts,
                req.model_version,
                req.arm,
                [item for item, _ in rec.items],
                self.config.feedback.lists,
                req.experiment,
            )
        except Exception:
            # The list itself goes to its topics: a failed update must not cost it.
            log.exception("could not remember a recommendation list")
        return True

    def _write_batch(self, batch: Sequence[ScoreRequest]) -> None:
        """Write the profiles of a delivered batch: one write per user, whose changelog
        record the acks of all the user's events in the batch wait for."""
        by_user: dict[str, tuple[PendingProfile, list[EventT[Any]]]] = {}
        for req in batch:
            entry, req.pending = req.pending, None
            if entry is None:
                continue
            held = by_user.get(req.user)
            if held is None or held[0] is not entry:
                if held is not None:  # erased and back within one batch
                    self._release_logged(req.user, *held)
                held = by_user[req.user] = (entry, [])
            held[1].append(req.event)
        for user, (entry, events) in by_user.items():
            self._release_logged(user, entry, events)

    def _release_logged(
        self, user: str, entry: PendingProfile, events: Sequence[EventT[Any]]
    ) -> None:
        try:
            self._release(user, entry, events)
        except Exception:
            # The lists still go out; the events are acked with them (as when
            # remembering a list failed before).
            log.exception("could not write a profile")

    # -- privacy: erasure and expiry ------------------------------------------------------

    def _erased_before(self, event: Event | SearchEvent) -> bool:
        """Whether the event's user was erased at or after the event's time."""
        marker = self.profiles.get(self.users.marker(event.user_id))
        return marker is not None and event.ts <= float(orjson.loads(marker)["erased_at"])

    async def _control(self, event: EventT[Any]) -> None:
        msg = event.message
        request = decode_control(msg.value, msg.key)
        if isinstance(request, InvalidEvent):
            await self._dead_letter(event, request)
        elif isinstance(request, ErasureRequest):
            self._erase(event, request)
        else:
            self._expire(event, request)

    def _erase(self, event: EventT[Any], request: ErasureRequest) -> None:
        """Forget a user, inside the request's stream iteration (its partition).

        The profile is deleted (RocksDB and a changelog tombstone), a marker (audit
        pseudonym -> erasure time, no id) keeps replayed older events out, the latest
        list is tombstoned in ``recommendations-latest`` and the erasure is recorded in
        the audit topic. The request is acked once all of it is delivered.
        """
        now = time.time()
        user = self.users.state(request.user_id)
        # Events in flight keep their lists but write nothing (see _remember).
        in_flight = self._pending.pop(user, None) is not None
        found = self.profiles.get(user) is not None
        if found:
            del self.profiles[user]
        found = found or in_flight
        self.profiles[self.users.marker(request.user_id)] = orjson.dumps({"erased_at": now})
        self.users.forget()  # the id leaves the key caches too
        self.acks.expect(event)
        self.output.produce(
            self.config.topics.recommendations_latest,
            user.encode(),
            None,
            functools.partial(self._delivered, event),
        )
        pseudonym = self.users.audit(request.user_id)
        self.output.produce(
            self.config.topics.erasure_audit,
            pseudonym.encode(),
            erasure_audit_bytes(
                pseudonym=pseudonym,
                erased_at=now,
                requested_at=request.requested_at,
                profile_found=found,
            ),
            functools.partial(self._delivered, event),
        )
        self.metrics.erasures.inc()
        log.info("erased user %s (profile found: %s)", pseudonym, found)

    def _expire(self, event: EventT[Any], expiry: ProfileExpiry) -> None:
        """Delete an inactive profile (or an old erasure marker) the sweep found.

        Checked again here: an event may have arrived since the sweep looked.
        """
        stored = None if expiry.expire in self._pending else self.profiles.get(expiry.expire)
        if stored is not None and _last_activity(orjson.loads(stored)) < expiry.before:
            del self.profiles[expiry.expire]
            self.metrics.profiles_expired.inc()
            if not expiry.expire.startswith(ERASED_PREFIX):
                self.acks.expect(event)
                self.output.produce(
                    self.config.topics.recommendations_latest,
                    expiry.expire.encode(),
                    None,
                    functools.partial(self._delivered, event),
                )
        self.acks.done(event)

    def expired_keys(
        self, entries: Iterable[tuple[str, bytes]], now: float
    ) -> Iterator[tuple[str, float]]:
        """``(key, cutoff)`` of the profiles and markers in ``entries`` that expired.

        Profiles: no event (event time) for ``profile_ttl_days`` (0: never). Erasure
        markers: older than ``erasure_marker_days``.
        """
        privacy = self.config.data_privacy
        profile_cutoff = now - privacy.profile_ttl_days * 86400.0
        marker_cutoff = now - privacy.erasure_marker_days * 86400.0
        for key, value in entries:
            marker = key.startswith(ERASED_PREFIX)
            if not marker and privacy.profile_ttl_days <= 0:
                continue
            cutoff = marker_cutoff if marker else profile_cutoff
            try:
                if _last_activity(orjson.loads(value)) < cutoff:
                    yield key, cutoff
            except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                continue

    async def sweep(self) -> int:
        """Find expired profiles and markers in the partitions this worker owns.

        Each one found becomes a :class:`ProfileExpiry` record on its partition of the
        control topic, so the deletion happens in stream iteration (changelog
        tombstone tied to that record's ack) and is checked again there. The scan
        reads RocksDB in a thread; a memory store (tests) has nothing to scan.

        Returns:
            How many expiries were requested.
        """
        now = time.time()
        topic = self.profiles.changelog_topic.get_topic_name()
        active = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        dbs = {p: db for p, db in rocksdb_partitions(self.profiles.data).items() if p in active}
        found = await asyncio.to_thread(self._scan, dbs, now)
        for partition, key, cutoff in found:
            self.request_expiry(partition, key, cutoff)
        return len(found)

    def _scan(self, dbs: dict[int, Any], now: float) -> list[tuple[int, str, float]]:
        out: list[tuple[int, str, float]] = []
        for partition, db in dbs.items():
            entries = []
            for raw_key, value in db.items():
                if raw_key.startswith(b"__faust"):
                    continue  # Faust's own bookkeeping (the changelog offset)
                try:
                    entries.append((str(orjson.loads(raw_key)), value))
                except orjson.JSONDecodeError:
                    continue
            out.extend((partition, key, cutoff) for key, cutoff in self.expired_keys(entries, now))
        return out

    def request_expiry(self, partition: int, key: str, cutoff: float) -> None:
        """Send a :class:`ProfileExpiry` for ``key`` to its partition of the control topic."""
        self.output.produce(
            self.config.topics.user_erasure,
            key.encode(),
            orjson.dumps({"schema_version": 1, "expire": key, "before": cutoff}),
            lambda _offset: None,
            partition=partition,
        )

    def _count_list(self, model_version: str, arm: str, experiment: str) -> None:
        key = (model_version, arm, experiment)
        tally = self._lists.get(key)
        if tally is None:
            tally = self._lists[key] = Tally(self.metrics.recommendation_lists.labels(*key))
            self._tallies.append(tally)
        tally.add()

    def _count_hit(self, event_type: str, model_version: str, arm: str, experiment: str) -> None:
        key = (event_type, model_version, arm, experiment)
        tally = self._hits.get(key)
        if tally is None:
            tally = self._hits[key] = Tally(self.metrics.recommendation_hits.labels(*key))
            self._tallies.append(tally)
        tally.add()

    def _flush_metrics(self) -> None:
        for tally in self._tallies:
            tally.flush()

    async def _dead_letter(self, event: EventT[Any], invalid: InvalidEvent) -> None:
        msg = event.message
        self.metrics.events_invalid.labels(invalid.code.value).inc()
        self._flush_metrics()
        # The reason never quotes the payload, so this line is safe at WARNING.
        log.warning(
            "dead-lettered %s[%d]@%d (key %s): %s: %s",
            msg.topic,
            msg.partition,
            msg.offset,
            self._user_ref(msg.key),
            invalid.code.value,
            invalid.reason,
        )
        try:
            self._send_dead_letter(event, invalid)
        except Exception:
            # Not acked: the record is redelivered after a restart instead of lost.
            log.exception("could not write to the dead-letter topic; leaving the record unacked")

    def _send_dead_letter(self, event: EventT[Any], invalid: InvalidEvent) -> None:
        msg = event.message
        self.output.produce(
            self.config.topics.dead_letter,
            msg.key[:1024] if msg.key else msg.key,
            dead_letter_bytes(
                reason_code=invalid.code.value,
                reason=invalid.reason,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
                key=msg.key,
                value=msg.value,
                failed_at=time.time(),
            ),
            functools.partial(self._delivered, event),
        )

    def start_rules(self) -> None:
        """Read the item rules in the background (every worker reads all of them)."""
        consumer = RulesConsumer(
            self.config.kafka.client_config(),
            self.config.topics.item_rules,
            self.rules,
            self._dead_letter_rule,
            self._rules_applied,
        )
        self._rules_task = asyncio.ensure_future(consumer.run())

    async def count_co_purchases(self, stream: StreamT[Any]) -> None:
        """Agent body: fold co-purchase records into the per-item counts, publish bundles.

        Acked like the scoring agent's events: once the table's changelog record and
        the bundle record are delivered.
        """
        self.output.start()
        async for event in manual_ack_events(stream):
            await self.output.wait_for_room()
            self.acks.track(event)
            try:
                self._count(event)
            except Exception as exc:  # never let one record stop the worker
                log.exception("unexpected error on a co-purchase record")
                await self._dead_letter(
                    event, InvalidEvent(code=ReasonCode.PROCESSING_ERROR, reason=repr(exc)[:500])
                )

    def _count(self, event: EventT[Any]) -> None:
        model, table = self.co_purchases, self.bundle_counts
        assert model is not None and table is not None  # registered only with both
        msg = event.message
        record = decode_co_purchase(msg.key, msg.value)
        if isinstance(record, InvalidEvent):
            self._send_dead_letter(event, record)
            self.metrics.events_invalid.labels(record.code.value).inc()
            return
        anchor = record.anchor_item_id
        bundles = self.config.bundles
        counts = model.counts()
        stored, counted = fold_co_purchase(
            table.get(anchor),
            record,
            counts,
            horizon_s=bundles.dedup_horizon_s,
            cap=bundles.dedup_max,
        )
        if not counted:
            self._duplicates.add()
        # Written (and published) for a replay too, so changelog and topic converge.
        table[anchor] = stored
        top, updated_ts = publishable(
            stored,
            anchor,
            counts,
            n=bundles.size * CANDIDATE_POOL,
            min_support=bundles.min_support,
            min_score=bundles.min_score,
        )
        self.output.produce(
            self.config.topics.bundles,
            anchor.encode(),
            bundle_bytes(anchor, top, updated_ts) if top else None,  # None: a tombstone
            functools.partial(self._delivered, event),
        )

    def start_bundles(self) -> None:
        """Read the bundles in the background (every worker reads all of them)."""
        consumer = BundlesConsumer(
            self.config.kafka.client_config(),
            self.config.topics.bundles,
            self.bundles,
            self._dead_letter_rule,
            lambda: self.metrics.item_rules.labels("bundles").set(len(self.bundles)),
        )
        self._bundles_task = asyncio.ensure_future(consumer.run())

    def start_catalog(self) -> None:
        """Read the catalog in the background (every worker reads all of it)."""
        consumer = CatalogConsumer(
            self.config.kafka.client_config(),
            self.config.topics.items,
            self.catalog,
            self.rules,
            self._dead_letter_rule,
            self.text,
            self._in_embedding_thread,
            self._catalog_applied,
        )
        self._catalog_task = asyncio.ensure_future(consumer.run())

    def _in_embedding_thread(self, work: Callable[[], np.ndarray]) -> Awaitable[np.ndarray]:
        # Catalog text is embedded in its own thread, beside the scoring thread (which
        # embeds the searches with the same encoder; an ONNX session runs concurrently).
        return asyncio.get_running_loop().run_in_executor(self._embedding, work)

    def _catalog_applied(self, applied: int) -> None:
        self.metrics.item_rules_applied.inc(applied)
        self.metrics.item_rules.labels("catalog").set(len(self.catalog))
        self.metrics.item_rules.labels("hidden").set(len(self.rules.hidden))
        if self.text is not None:
            self.metrics.item_rules.labels("embedded").set(len(self.text.index))

    @property
    def side_topics_loaded(self) -> bool:
        """Whether the item rules, the catalog and the bundles were read to their
        start's end (a worker that serves before has lists without their bans, cold
        items or bundles)."""
        return self.rules.loaded and self.catalog.loaded and self.bundles.loaded

    def _rules_applied(self, applied: int) -> None:
        self.metrics.item_rules_applied.inc(applied)
        self.metrics.item_rules.labels("rules").set(len(self.rules))
        self.metrics.item_rules.labels("hidden").set(len(self.rules.hidden))

    def _dead_letter_rule(self, msg: Any, invalid: InvalidEvent) -> None:
        """A bad record of a broadcast topic (item rules, catalog): to the dead-letter topic."""
        self.metrics.events_invalid.labels(invalid.code.value).inc()
        log.warning(
            "dead-lettered %s[%s]@%s: %s: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            invalid.code.value,
            invalid.reason,
        )
        key, value = msg.key(), msg.value()
        _kind, timestamp_ms = msg.timestamp()
        self.output.produce(
            self.config.topics.dead_letter,
            key[:1024] if key else key,
            dead_letter_bytes(
                reason_code=invalid.code.value,
                reason=invalid.reason,
                topic=msg.topic() or "",
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                timestamp_ms=timestamp_ms if timestamp_ms > 0 else None,
                key=key,
                value=value,
                failed_at=time.time(),
            ),
            lambda _offset: None,
        )

    def _delivered(self, event: EventT[Any], _offset: int) -> None:
        self.acks.done(event)

    def _write_changelog(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        on_delivered: Callable[[int], None],
    ) -> None:
        """The profiles table's changelog writer: librdkafka, tied to the event's ack."""
        event = current_event()  # the event whose iteration is writing the table
        waiting = [*self._riders, event] if event is not None else list(self._riders)
        for ev in waiting:
            self.acks.expect(ev)

        def delivered(offset: int) -> None:
            on_delivered(offset)
            for ev in waiting:
                self.acks.done(ev)

        self.output.produce(topic, key, value, delivered, partition=partition)
