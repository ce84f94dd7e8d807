"""Offline evaluation in torch: `ModuleRanker`, leave-last-out, a reference ranking.

`ModuleRanker` puts the torch network behind the `models.ranking.Ranker` protocol
(training validates with it, ``recstream evaluate`` ranks with it). The rest only the
tests use: to check that training learns (`leave_last_out`, `evaluate_model`,
`evaluate_popularity`) and to compare the exported ONNX scorer with the torch model
(`rank_with_model`). Metrics come from `models.metrics`, like every other evaluation.

`leave_last_out` holds out, per user, the last event of a target type (default:
"browse", i.e. the next product a user opens) and keeps everything before it for
training, so evaluation never leaks the held-out event into the training data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from models.encoding import EncodedHistories, encode_histories
from models.interactions import HistoryItem, Interaction
from models.metadata import MASKED_SCORE
from models.metrics import ranking_metrics
from models.network import Recommender
from models.splits import EvalCase
from models.trained import TrainedModel

__all__ = [
    "EvalCase",
    "ModuleRanker",
    "evaluate_model",
    "evaluate_popularity",
    "leave_last_out",
    "popularity_ranking",
    "rank_with_model",
]


def leave_last_out(
    interactions: Iterable[Interaction],
    *,
    target_event_types: Sequence[str] = ("browse",),
    min_history: int = 1,
) -> tuple[list[Interaction], list[EvalCase]]:
    """Split off each user's last target-type event as a test case.

    For a user whose last qualifying event is at timeline position j (j >= min_history),
    events [0, j) go to training and the case is (events [0, j) -> item j); events after
    j are dropped so they cannot leak. Users without a qualifying event train fully.

    Args:
        interactions: All interactions.
        target_event_types: Event types eligible as held-out targets.
        min_history: Minimum number of preceding events for a case.

    Returns:
        (training interactions, eval cases sorted by user id).
    """
    per_user: dict[str, list[tuple[float, int, Interaction]]] = defaultdict(list)
    for order, it in enumerate(interactions):
        per_user[it.user_id].append((it.ts, order, it))
    train: list[tuple[int, Interaction]] = []
    cases: list[EvalCase] = []
    for user in sorted(per_user):
        rows = sorted(per_user[user], key=lambda r: (r[0], r[1]))
        cut = next(
            (
                j
                for j in range(len(rows) - 1, min_history - 1, -1)
                if rows[j][2].event_type in target_event_types
            ),
            None,
        )
        kept = rows if cut is None else rows[:cut]
        train.extend((order, it) for _, order, it in kept)
        if cut is not None:
            history = tuple((it.item_id, it.event_type, it.channel) for _, _, it in kept)
            cases.append(EvalCase(user_id=user, history=history, target=rows[cut][2].item_id))
    train.sort(key=lambda r: r[0])  # back to input order
    return [it for _, it in train], cases


def popularity_ranking(trained: TrainedModel) -> list[str]:
    """All items by descending popularity (ties by index, i.e. by id)."""
    counts = np.asarray(trained.popularity[1:], dtype=np.int64)
    order = np.argsort(-counts, kind="stable") + 1
    return [trained.vocab.decode(int(i)) for i in order]


@torch.no_grad()
def rank_with_model(
    trained: TrainedModel,
    histories: Sequence[Sequence[HistoryItem]],
    k: int = 10,
    *,
    batch_size: int = 256,
) -> list[list[str]]:
    """Top-k ids per history from the torch model (popularity when nothing is known).

    Mirrors the ONNX scorer: unknown items are skipped, the padding item is masked,
    rows without any known item fall back to popularity. Nothing else is excluded.

    Args:
        trained: The trained model.
        histories: Oldest-first histories.
        k: Results per history.
        batch_size: Rows per forward pass.

    Returns:
        Ranked ids per history.
    """
    model = trained.module.eval()
    popular = popularity_ranking(trained)[:k]
    out: list[list[str]] = []
    for start in range(0, len(histories), batch_size):
        enc = encode_histories(
            histories[start : start + batch_size], trained.vocab.index, trained.config.max_len
        )
        scores = model.last_scores(
            torch.from_numpy(enc.item_seq),
            torch.from_numpy(enc.type_seq),
            torch.from_numpy(enc.channel_seq),
        )
        scores[:, 0] = MASKED_SCORE
        top = torch.topk(scores, min(k, trained.vocab.n_items), dim=1).indices.numpy()
        for row, known in enumerate(enc.has_known):
            if known:
                out.append([trained.vocab.decode(int(i)) for i in top[row]])
            else:
                out.append(list(popular))
    return out


def evaluate_model(
    trained: TrainedModel, cases: Sequence[EvalCase], k: int = 10
) -> dict[str, float]:
    """HR@k / NDCG@k of the torch model on held-out cases."""
    ranked = rank_with_model(trained, [c.history for c in cases], k)
    return ranking_metrics(ranked, [c.target for c in cases], k)


def evaluate_popularity(
    trained: TrainedModel, cases: Sequence[EvalCase], k: int = 10
) -> dict[str, float]:
    """HR@k / NDCG@k of the global-popularity baseline (same vocabulary and counts)."""
    popular = popularity_ranking(trained)[:k]
    return ranking_metrics([popular] * len(cases), [c.target for c in cases], k)


class ModuleRanker:
    """`models.ranking.Ranker` over a torch `Recommender` (full catalog scores).

    Args:
        module: The network (switched to eval mode while scoring).
        name: Report name.
    """

    def __init__(self, module: Recommender, name: str = "transformer") -> None:
        self.module = module
        self.name = name
        self.max_len = module.max_len

    @torch.no_grad()
    def score(self, batch: EncodedHistories) -> npt.NDArray[np.float32]:
        """Logits [B, n_items + 1] at the last position of each history."""
        was_training = self.module.training
        self.module.eval()
        device = next(self.module.parameters()).device
        tensors = [
            torch.from_numpy(a).to(device)
            for a in (batch.item_seq, batch.type_seq, batch.channel_seq)
        ]
        scores = self.module.last_scores(*tensors).float().cpu().numpy()
        self.module.train(was_training)
        return scores
