"""What item text and search intents buy, measured on the synthetic shop.

`run_semantic_eval` trains a small model on `models.synthetic` events with a share of
the items held out (no interactions at all: "cold"), embeds every item's title and
every category name with a text encoder, attaches the titles to the scorer
(`OnnxScorer.attach_catalog`) and measures, on users split into a validation and a
test half:

* search: after a search naming a category the user's history does not touch, the
  share of the top-10 in that category with vs without the search signal; and, with a
  search for the category of the user's true next item, HR/NDCG@10 of that item (the
  validation objective that selects `search_weight`: too little weight ignores the
  search, too much ranks by text alone);
* no search: HR/NDCG@10 of the next item with and without the catalog attached;
* cold items: the share of users whose top-20 holds a cold item of the category they
  browse, and HR/NDCG@20 of cold next items (users whose next item is a cold one),
  with vs without text.

The encoder is any ``texts -> unit vectors`` callable (`Embed`): the pretrained MiniLM
in ``recstream bench semantic``, planted vectors in the tests. torch is needed only to
train; scoring goes through onnxruntime as in production.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.catalog import ItemTextIndex
from models.config import TrainConfig
from models.evaluate import leave_last_out
from models.interactions import Interaction
from models.metrics import ranking_metrics
from models.scorer import COLD_MIN_FIT, Intent, OnnxScorer, Recommendation
from models.splits import EvalCase
from models.synthetic import SyntheticShop

__all__ = [
    "DEFAULT_COLD_RIDGES",
    "DEFAULT_COLD_SCALES",
    "DEFAULT_SEARCH_WEIGHTS",
    "STAY_TOLERANCE",
    "Embed",
    "SemanticData",
    "cold_metrics",
    "cold_recall",
    "prepare",
    "run_semantic_eval",
    "search_metrics",
    "search_share",
    "select_search_weight",
]

logger = logging.getLogger("recstream.models.semantic_eval")

#: texts -> float32 [N, dim] unit rows (a text encoder's `encode`).
Embed = Callable[[Sequence[str]], np.ndarray]

#: `search_weight` values tried on the validation split.
DEFAULT_SEARCH_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
#: Ridge penalties of the cold-item text map tried on the validation split.
DEFAULT_COLD_RIDGES: tuple[float, ...] = (1.0, 10.0, 100.0)
#: Largest relative loss of NDCG@10 a search may cost users who stay in their category.
STAY_TOLERANCE = 0.1
#: Cold-logit scales (`OnnxScorer.cold_scale`) tried on the validation split.
DEFAULT_COLD_SCALES: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True, slots=True)
class SemanticData:
    """The shop split for the measurement.

    Attributes:
        category: Item id -> category name (every catalog item).
        cold: Items held out of training (no interactions).
        item_vectors: Item id -> unit title embedding (every catalog item).
        query_vectors: Category name -> unit embedding of the search naming it.
        valid: Next-item cases of the validation users: each user's last browse (its
            target is a cold item for about `cold_share` of them, as in the shop).
        test: The same for the test users.
        cold_valid: Cases whose target is a user's first cold item (validation users).
        cold_test: The same for the test users.
    """

    category: dict[str, str]
    cold: frozenset[str]
    item_vectors: dict[str, np.ndarray]
    query_vectors: dict[str, np.ndarray]
    valid: list[EvalCase]
    test: list[EvalCase]
    cold_valid: list[EvalCase]
    cold_test: list[EvalCase]

    def warm(self, cases: Sequence[EvalCase]) -> list[EvalCase]:
        """The cases whose target is a warm item (one the model was trained on)."""
        return [c for c in cases if c.target not in self.cold]

    def index(self, *, with_cold: bool = True) -> ItemTextIndex:
        """An `ItemTextIndex` of the titles (warm items only unless `with_cold`)."""
        ids = [i for i in self.item_vectors if with_cold or i not in self.cold]
        dim = next(iter(self.item_vectors.values())).shape[0]
        index = ItemTextIndex(dim)
        index.upsert(ids, np.stack([self.item_vectors[i] for i in ids]))
        return index


def query_text(category: str) -> str:
    """The search a shopper types for a category (its name, lower case)."""
    return category.lower()


def prepare(
    shop: SyntheticShop, embed: Embed, *, cold_share: float = 0.1, seed: int = 0
) -> tuple[list[Interaction], SemanticData]:
    """Hold out cold items, split users into validation / test, embed titles and queries.

    Args:
        shop: The synthetic shop.
        embed: Text encoder.
        cold_share: Share of each category's items held out of training.
        seed: Seed of the cold items and the user split.

    Returns:
        (training interactions, the split).
    """
    rng = random.Random(seed)
    category = {item.item_id: item.category for item in shop.catalog}
    by_category: dict[str, list[str]] = defaultdict(list)
    for item in shop.catalog:
        by_category[item.category].append(item.item_id)
    cold: set[str] = set()
    for members in by_category.values():
        cold.update(rng.sample(members, int(round(cold_share * len(members)))))
    train_all, cases = leave_last_out(e.to_interaction() for e in shop.events)
    train = [it for it in train_all if it.item_id not in cold]
    users = sorted({c.user_id for c in cases})
    rng.shuffle(users)
    valid_users = set(users[: len(users) // 2])
    cold_cases = _first_cold_cases(shop, frozenset(cold))
    titles = [item.title for item in shop.catalog]
    vectors = np.asarray(embed(titles), dtype=np.float32)
    names = sorted(by_category)
    queries = np.asarray(embed([query_text(c) for c in names]), dtype=np.float32)
    data = SemanticData(
        category=category,
        cold=frozenset(cold),
        item_vectors={item.item_id: vectors[i] for i, item in enumerate(shop.catalog)},
        query_vectors={c: queries[i] for i, c in enumerate(names)},
        valid=[c for c in cases if c.user_id in valid_users],
        test=[c for c in cases if c.user_id not in valid_users],
        cold_valid=[c for c in cold_cases if c.user_id in valid_users],
        cold_test=[c for c in cold_cases if c.user_id not in valid_users],
    )
    return train, data


def _first_cold_cases(shop: SyntheticShop, cold: frozenset[str]) -> list[EvalCase]:
    """Per user, the first browse of a cold item after at least one warm event."""
    history: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    done: set[str] = set()
    cases: list[EvalCase] = []
    for event in shop.events:
        user = event.user_id
        if user in done:
            continue
        if event.item_id in cold:
            if event.event_type == "browse" and history[user]:
                cases.append(EvalCase(user, tuple(history[user]), event.item_id))
                done.add(user)
            continue
        history[user].append((event.item_id, event.event_type, event.channel))
    return cases


def _recommend(
    scorer: OnnxScorer,
    cases: Sequence[EvalCase],
    k: int,
    intents: Sequence[Intent | None] | None = None,
    batch: int = 256,
) -> list[Recommendation]:
    out: list[Recommendation] = []
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        out += scorer.recommend(
            [c.history for c in chunk],
            [set()] * len(chunk),
            k,
            intents=None if intents is None else intents[start : start + batch],
        )
    return out


def _ids(recs: Iterable[Recommendation]) -> list[list[str]]:
    return [[i for i, _ in r.items] for r in recs]


def sequence_metrics(
    scorer: OnnxScorer, cases: Sequence[EvalCase], k: int = 10
) -> dict[str, float]:
    """HR/NDCG@k of the next item without any search."""
    return ranking_metrics(_ids(_recommend(scorer, cases, k)), [c.target for c in cases], k)


def search_metrics(
    scorer: OnnxScorer, cases: Sequence[EvalCase], data: SemanticData, k: int = 10
) -> dict[str, float]:
    """HR/NDCG@k of the next item when the user searched for its category."""
    intents: list[Intent | None] = [
        Intent(data.query_vectors[data.category[c.target]], 1.0) for c in cases
    ]
    ranked = _ids(_recommend(scorer, cases, k, intents))
    return ranking_metrics(ranked, [c.target for c in cases], k)


def search_share(
    scorer: OnnxScorer, cases: Sequence[EvalCase], data: SemanticData, k: int = 10, seed: int = 0
) -> dict[str, float]:
    """Share of the top-k in a searched category absent from the user's history.

    Each user searches one category (seeded choice) that none of their history items
    is in; users whose history covers every category are skipped.

    Returns:
        {"share_without", "share_with", "matches_search_share", "n_users"}: shares of
        the top-k in the searched category without and with the search, and the share
        of the items in the lists with the search whose reason is "matches_search".
    """
    rng = random.Random(seed)
    categories = sorted(data.query_vectors)
    chosen: list[tuple[EvalCase, str]] = []
    for case in cases:
        seen = {data.category[i] for i, _, _ in case.history if i in data.category}
        options = [c for c in categories if c not in seen]
        if options:
            chosen.append((case, rng.choice(options)))
    picked = [case for case, _ in chosen]
    without = _recommend(scorer, picked, k)
    intents: list[Intent | None] = [Intent(data.query_vectors[c], 1.0) for _, c in chosen]
    with_search = _recommend(scorer, picked, k, intents)

    def share(recs: list[Recommendation]) -> float:
        hits = [
            sum(data.category.get(i) == c for i, _ in r.items) / max(1, len(r.items))
            for r, (_, c) in zip(recs, chosen, strict=True)
        ]
        return float(np.mean(hits)) if hits else 0.0

    reasons = [x.code for r in with_search for x in (r.reasons or [])]
    return {
        "share_without": share(without),
        "share_with": share(with_search),
        "matches_search_share": reasons.count("matches_search") / max(1, len(reasons)),
        "n_users": float(len(chosen)),
    }


def select_search_weight(curve: dict[str, dict[str, float]]) -> float:
    """The weight of best switch-case NDCG@10 whose stay-case NDCG@10 is within
    `STAY_TOLERANCE` of the smallest weight's (the no-search reference)."""
    weights = sorted(curve, key=float)
    floor = (1.0 - STAY_TOLERANCE) * curve[weights[0]]["ndcg@10_stay"]
    allowed = [w for w in weights if curve[w]["ndcg@10_stay"] >= floor]
    return float(max(allowed, key=lambda w: (curve[w]["ndcg@10_switch"], -float(w))))


def _stay_and_switch(
    cases: Sequence[EvalCase], data: SemanticData
) -> tuple[list[EvalCase], list[EvalCase]]:
    """Cases whose target is in the category of the last history item, and the rest."""
    stay = [c for c in cases if data.category[c.target] == data.category.get(c.history[-1][0])]
    keep = {id(c) for c in stay}
    return stay, [c for c in cases if id(c) not in keep]


def cold_recall(
    scorer: OnnxScorer, cases: Sequence[EvalCase], data: SemanticData, k: int = 20
) -> dict[str, float]:
    """Share of users whose top-k holds a cold item of the category they browse.

    A user "browses" the category of their latest history item; users whose category
    has no cold item are skipped.
    """
    cold_categories = {data.category[i] for i in data.cold}
    picked = [c for c in cases if data.category.get(c.history[-1][0]) in cold_categories]
    recs = _recommend(scorer, picked, k)
    hits = [
        any(
            i in data.cold and data.category[i] == data.category[c.history[-1][0]]
            for i, _ in r.items
        )
        for r, c in zip(recs, picked, strict=True)
    ]
    any_cold = [any(i in data.cold for i, _ in r.items) for r in recs]
    return {
        "cold_recall": float(np.mean(hits)) if hits else 0.0,
        "lists_with_a_cold_item": float(np.mean(any_cold)) if any_cold else 0.0,
        "n_users": float(len(picked)),
    }


def cold_metrics(scorer: OnnxScorer, cases: Sequence[EvalCase], k: int = 20) -> dict[str, float]:
    """HR/NDCG@k of cold next items (cases from `SemanticData.cold_test`)."""
    return ranking_metrics(_ids(_recommend(scorer, cases, k)), [c.target for c in cases], k)


def run_semantic_eval(
    shop: SyntheticShop,
    embed: Embed,
    config: TrainConfig,
    work_dir: Path,
    *,
    cold_share: float = 0.1,
    search_weights: Sequence[float] = DEFAULT_SEARCH_WEIGHTS,
    cold_ridges: Sequence[float] = DEFAULT_COLD_RIDGES,
    cold_scales: Sequence[float] = DEFAULT_COLD_SCALES,
    seed: int = 0,
    threads: int = 1,
    on_step: Callable[[str], None] | None = None,
    min_cold_fit: int = COLD_MIN_FIT,
) -> dict[str, Any]:
    """Train, export and measure (see the module docstring); returns a JSON-able report.

    `min_cold_fit` is the scorer's (`OnnxScorer.min_cold_fit`): lower it only for shops
    too small to fit the cold-item map by the serving rule (tests).

    Selected on the validation users, then used for every test number:

    * `search_weight`: with a search for the next item's category, the best NDCG@10 on
      the cases that switch category (the user's last item is in another one: there
      the search says something the history does not) among the weights that keep
      NDCG@10 on the cases that stay in category within `STAY_TOLERANCE` of no search
      (there the search adds nothing, and must not spoil the sequence order);
    * the cold map's ridge penalty and `cold_scale`: NDCG@10 of the next item over all
      cases (warm and cold targets in the shop's own mix).
    """
    from models.export import export_onnx
    from models.train import train_model

    log = on_step or logger.info
    train, data = prepare(shop, embed, cold_share=cold_share, seed=seed)
    log(f"training on {len(train)} interactions ({len(data.cold)} cold items held out)")
    trained = train_model(train, config)
    model_dir = export_onnx(trained, Path(work_dir) / "model", model_version="semantic-eval")
    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=threads)
    scorer.min_cold_fit = min_cold_fit
    warm_index, full_index = data.index(with_cold=False), data.index()

    log("validation: search_weight")
    scorer.attach_catalog(warm_index)
    stay, switch = _stay_and_switch(data.warm(data.valid), data)
    weight_curve: dict[str, dict[str, float]] = {}
    for weight in search_weights:
        scorer.search_weight = weight
        ndcg_stay = search_metrics(scorer, stay, data)["ndcg@10"]
        ndcg_switch = search_metrics(scorer, switch, data)["ndcg@10"]
        weight_curve[str(weight)] = {
            "ndcg@10_stay": ndcg_stay,
            "ndcg@10_switch": ndcg_switch,
            "category_share@10": search_share(scorer, data.valid, data)["share_with"],
        }
    best_weight = select_search_weight(weight_curve)
    log("validation: cold ridge and scale")
    cold_curve: dict[str, float] = {}
    for ridge in cold_ridges:
        scorer.cold_ridge = ridge
        scorer.attach_catalog(full_index)
        for scale in cold_scales:
            scorer.cold_scale = scale
            cold_curve[f"{ridge}/{scale}"] = sequence_metrics(scorer, data.valid)["ndcg@10"]
    best_ridge, best_scale = max(
        ((r, s) for r in cold_ridges for s in cold_scales),
        key=lambda rs: (cold_curve[f"{rs[0]}/{rs[1]}"], rs[0], -rs[1]),
    )

    log("test")
    scorer.search_weight, scorer.cold_ridge, scorer.cold_scale = (
        best_weight,
        best_ridge,
        best_scale,
    )
    report: dict[str, Any] = {
        "shop": {"items": len(shop.catalog), "cold_items": len(data.cold)},
        "cases": {
            "valid": len(data.valid),
            "test": len(data.test),
            "test_cold_targets": len(data.test) - len(data.warm(data.test)),
            "cold_valid": len(data.cold_valid),
            "cold_test": len(data.cold_test),
        },
        "validation": {
            "cases_stay_switch": [len(stay), len(switch)],
            "search_weight_curve": weight_curve,
            "search_weight": best_weight,
            "cold_ridge/scale_overall_ndcg@10": cold_curve,
            "cold_ridge": best_ridge,
            "cold_scale": best_scale,
        },
    }
    warm_test = data.warm(data.test)
    scorer.attach_catalog(None)
    no_catalog = sequence_metrics(scorer, warm_test)
    overall_without = sequence_metrics(scorer, data.test)
    no_search_share = search_share(scorer, data.test, data)
    cold_without = cold_recall(scorer, data.test, data)
    cold_hits_without = cold_metrics(scorer, data.cold_test)
    scorer.attach_catalog(warm_index)
    warm_catalog = sequence_metrics(scorer, warm_test)
    search = search_share(scorer, data.test, data)
    search_hits = search_metrics(scorer, warm_test, data)
    stay_test, switch_test = _stay_and_switch(warm_test, data)
    switch_without = sequence_metrics(scorer, switch_test)
    switch_with = search_metrics(scorer, switch_test, data)
    scorer.attach_catalog(full_index)
    report["test"] = {
        "search": {
            "category_share@10_without_search": no_search_share["share_without"],
            "category_share@10_with_search": search["share_with"],
            "matches_search_reason_share": search["matches_search_share"],
            "users": search["n_users"],
            "next_item_searched_category_without": warm_catalog,
            "next_item_searched_category_with": search_hits,
            "switch_cases_without_search": switch_without,
            "switch_cases_with_search": switch_with,
        },
        "no_search_warm_targets": {
            "without_catalog": no_catalog,
            "with_catalog_warm_text": warm_catalog,
            "with_catalog_and_cold_items": sequence_metrics(scorer, warm_test),
        },
        "no_search_all_targets": {
            "without_text": overall_without,
            "with_text_and_cold_items": sequence_metrics(scorer, data.test),
        },
        "cold": {
            "cold_recall@20_without_text": cold_without["cold_recall"],
            "cold_recall@20_with_text": cold_recall(scorer, data.test, data)["cold_recall"],
            "cold_next_item_without_text": cold_hits_without,
            "cold_next_item_with_text": cold_metrics(scorer, data.cold_test),
        },
    }
    return report
