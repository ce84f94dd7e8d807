"""Item text embeddings from a local encoder, and recommending items without interactions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import TrainConfig
from models.content import TextEncoder, add_cold_items, encode_item_texts
from models.encoding import encode_histories
from models.evaluate import ModuleRanker
from models.export import export_onnx
from models.metadata import ModelMetadata
from models.scorer import OnnxScorer
from models.synthetic import SyntheticShop
from models.train import train_model

transformers = pytest.importorskip("transformers")


def _texts(shop: SyntheticShop) -> dict[str, str]:
    return {item.item_id: f"{item.title} {item.category}".lower() for item in shop.catalog}


@pytest.fixture(scope="module")
def encoder_dir(tiny_shop: SyntheticShop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT with a word-level vocabulary, saved locally."""
    out = tmp_path_factory.mktemp("encoder")
    words = sorted({w for text in _texts(tiny_shop).values() for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(out))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(str(out))
    return out


def test_encoder_embeddings(encoder_dir: Path) -> None:
    encoder = TextEncoder(encoder_dir, batch_size=2)
    vectors = encoder.encode(["a b c", "a b c", "something else entirely", ""])
    assert vectors.shape == (4, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # deterministic, batch-free
    assert encoder.encode([]).shape == (0, 16)


def test_cold_items_are_recommendable(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig, encoder_dir: Path, tmp_path: Path
) -> None:
    texts = _texts(tiny_shop)
    content = encode_item_texts(TextEncoder(encoder_dir), texts)
    interactions = tiny_shop.interactions()
    seen = {it.item_id for it in interactions}
    cold_ids = sorted(set(texts) - seen)[:5] or []
    # Hold out some interacted items too, so there is always something cold to add.
    held = sorted(seen)[:5]
    train = [it for it in interactions if it.item_id not in held]
    known_content = {i: v for i, v in content.items() if i not in held and i not in cold_ids}
    trained = train_model(train, replace(tiny_config, epochs=2), item_content=known_content)
    new = {i: content[i] for i in held + cold_ids}
    extended = add_cold_items(trained, new)
    assert extended.vocab.ids[: len(trained.vocab)] == trained.vocab.ids
    assert set(new) <= set(extended.vocab.index)
    assert extended.popularity[len(trained.vocab) :] == [0] * len(new)

    # Known items score exactly as before; new items score through their text.
    histories = [[(it.item_id, it.event_type, it.channel)] for it in train[:40]]
    enc = encode_histories(histories, trained.vocab.index, trained.config.max_len)
    before = ModuleRanker(trained.module).score(enc)
    after = ModuleRanker(extended.module).score(enc)
    np.testing.assert_allclose(after[:, : before.shape[1]], before, atol=1e-5)
    new_cols = [extended.vocab.index[i] for i in new]
    assert np.all(np.abs(after[:, new_cols]) > 0)

    # Exported and served: a new item comes back once the known items are excluded.
    out = export_onnx(extended, tmp_path / "m")
    meta = ModelMetadata.load(out)
    assert set(new) <= {i for i in meta.items if i}
    scorer = OnnxScorer.load(out, provider="cpu")
    known = set(trained.vocab.index)
    recs = scorer.recommend(histories[:3], [known] * 3, 3)
    for rec in recs:
        assert rec.strategy == "sequential" and len(rec.items) == 3
        assert {item for item, _ in rec.items} <= set(new)

    # The extended model round-trips through a checkpoint.
    save_checkpoint(extended, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    np.testing.assert_allclose(
        ModuleRanker(loaded.module).score(enc)[:, :5], after[:, :5], atol=1e-6
    )


def test_cold_items_need_a_content_model(tiny_trained) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="without item content"):
        add_cold_items(tiny_trained, {"new": np.zeros(16, dtype=np.float32)})
