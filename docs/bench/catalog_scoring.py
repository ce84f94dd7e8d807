"""Scorer costs of the live catalog, side by side in one run (numpy + onnxruntime).

    python docs/bench/catalog_scoring.py hidden   # 256 rows x 10k hidden ids, 1,000 cold items, k=20
    python docs/bench/catalog_scoring.py build    # catalog view rebuild at 50k items (dim 384)

`hidden` times the same batch with the item rules' hidden set in every row's exclude
set and passed once as `hidden=` (and asserts both give the same lists); `build` times
the catalog view build and the text index's writes and snapshot. Trains a tiny model
once into /tmp/recstream-catalog-bench-model. Figures: docs/BENCHMARKS.md.
"""

import inspect
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from models.catalog import ItemTextIndex
from models.config import TrainConfig
from models.export import export_onnx
from models.scorer import Intent, OnnxScorer
from models.synthetic import generate_shop
from models.train import train_model

MODEL = Path("/tmp/recstream-catalog-bench-model")


def model() -> Path:
    if not (MODEL / "metadata.json").exists():
        shop = generate_shop(n_items=400, n_users=300, n_categories=8, seed=1)
        cfg = TrainConfig(max_len=20, dim=32, n_layers=1, n_heads=2, epochs=1, max_k=200, seed=1)
        export_onnx(train_model(shop.interactions(), cfg), MODEL)
    return MODEL


def unit(rng, n, d):
    m = rng.normal(size=(n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def best(fn, repeats=5):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3, float(np.median(ts)) * 1e3


def hidden_bench() -> None:
    scorer = OnnxScorer.load(model(), provider="cpu", intra_op_threads=1)
    rng = np.random.default_rng(0)
    vocab = [i for i in scorer.metadata.items if i is not None]
    dim = 64
    index = ItemTextIndex(dim)
    cold = [f"cold-{n}" for n in range(1000)]
    index.upsert(vocab + cold, unit(rng, len(vocab) + len(cold), dim))
    scorer.attach_catalog(index)
    hidden = frozenset(cold[:300] + vocab[:50] + [f"gone-{n}" for n in range(10_000 - 350)])
    histories = [
        [(vocab[j], "view", "web") for j in rng.integers(0, len(vocab), 15)] for _ in range(256)
    ]
    own = [set(rng.choice(vocab, 5).tolist()) for _ in range(256)]
    intents = [Intent(unit(rng, 1, dim)[0], 1.0) if r % 2 else None for r in range(256)]
    has_hidden = "hidden" in inspect.signature(scorer.recommend).parameters
    union = [o | hidden for o in own]
    for label, kw in [("no intents", {}), ("half with intents", {"intents": intents})]:
        b = scorer.recommend(histories, union, 20, **kw)
        ms = best(lambda: scorer.recommend(histories, union, 20, **kw))
        print(f"{label}: exclude=own|hidden    best {ms[0]:.1f} ms  median {ms[1]:.1f} ms")
        if has_hidden:
            a = scorer.recommend(histories, own, 20, hidden=hidden, **kw)
            assert a == b, "hidden= changes the lists"
            ms = best(lambda: scorer.recommend(histories, own, 20, hidden=hidden, **kw))
            print(f"{label}: exclude=own, hidden=   best {ms[0]:.1f} ms  median {ms[1]:.1f} ms")


def build_bench() -> None:
    scorer = OnnxScorer.load(model(), provider="cpu", intra_op_threads=1)
    rng = np.random.default_rng(0)
    vocab = [i for i in scorer.metadata.items if i is not None]
    dim = 384
    index = ItemTextIndex(dim)
    ids = vocab + [f"cold-{n}" for n in range(50_000 - len(vocab))]
    index.upsert(ids, unit(rng, len(ids), dim))
    scorer.attach_catalog(index)
    ms = best(lambda: scorer._build_catalog(index), repeats=3)
    print(
        f"view build at {len(index)} items (dim {dim}): best {ms[0]:.0f} ms median {ms[1]:.0f} ms"
    )
    t0 = time.perf_counter()
    index.upsert(["cold-7"], unit(rng, 1, dim))
    up = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    index.upsert(["brand-new"], unit(rng, 1, dim))
    ap = (time.perf_counter() - t0) * 1e3
    ms = best(lambda: index.snapshot(), repeats=5)
    print(
        f"index: replace 1 row {up:.1f} ms, append 1 row {ap:.1f} ms, snapshot best {ms[0]:.2f} ms"
    )
    cat = scorer._build_catalog(index)
    if hasattr(cat, "texts"):
        print("texts precomputed in the view")
    else:
        ms = best(lambda: np.concatenate([cat.vocab_text, cat.cold_text]))
        print(f"per-batch np.concatenate of the text matrix: best {ms[0]:.1f} ms")


{"hidden": hidden_bench, "build": build_bench}[sys.argv[1]]()
