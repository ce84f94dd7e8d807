"""A search changes the next list, through a live worker with a real (tiny) text encoder.

A random 2-layer BERT whose vocabulary is the synthetic shop's title words is exported
to ONNX (the worker stays torch-free), the shop's catalog is published to ``items``
(embedded by the worker), and a search naming an item's title brings that item into the
searching user's list.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from models.synthetic import SyntheticShop
from models.text_encoder import export_text_encoder
from streams.catalog import CatalogItem
from streams.client import event_from_dict
from streams.events import SearchEvent

from .conftest import Deployment

pytestmark = pytest.mark.integration


def _tiny_encoder(shop: SyntheticShop, out: Path) -> Path:
    """Export a random BERT over the shop's title words (no download)."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers import models as wordpiece_models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    words = sorted({w for item in shop.catalog for w in item.title.lower().split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(wordpiece_models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    hf = out / "hf"
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(str(hf))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(hf))
    return export_text_encoder(hf, out / "encoder", max_length=16)


def _gauge(text: str, kind: str) -> float:
    found = re.search(rf'recstream_item_rules\{{kind="{kind}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_a_search_brings_the_item_it_names_into_the_next_list(
    deployment: Deployment, shop: SyntheticShop, tmp_path: Path
) -> None:
    encoder_dir = _tiny_encoder(shop, tmp_path)
    worker = deployment.start_worker(text_encoder_dir=encoder_dir)
    with deployment.producer() as producer:
        for item in shop.catalog:
            producer.send_item(item.item_id, CatalogItem(title=item.title, category=item.category))
        producer.flush(10)
    deadline = time.monotonic() + 60
    while _gauge(worker.metrics_text(), "embedded") < len(shop.catalog):
        assert time.monotonic() < deadline, "the catalog was not embedded"
        time.sleep(0.2)

    now = time.time()
    first = shop.catalog[0].item_id
    click: Any = event_from_dict(
        {"event_type": "click", "event_id": "c1", "user_id": "u1", "item_id": first, "ts": now - 60}
    )
    with deployment.producer() as producer:
        producer.send(click)
        producer.flush(10)
    [before] = deployment.read_json(
        deployment.topics.recommendations, lambda rs: any(r["trigger_event_id"] == "c1" for r in rs)
    )
    listed = {i["item_id"] for i in before["items"]}
    target = next(
        i for i in reversed(shop.catalog) if i.item_id not in listed and i.item_id != first
    )
    with deployment.producer() as producer:
        producer.send_search(
            SearchEvent(event_id="s1", user_id="u1", query=target.title, ts=now - 30)
        )
        producer.flush(10)
    recs = deployment.read_json(
        deployment.topics.recommendations, lambda rs: any(r["trigger_event_id"] == "s1" for r in rs)
    )
    [after] = [r for r in recs if r["trigger_event_id"] == "s1"]
    items = {i["item_id"]: i for i in after["items"]}
    assert target.item_id in items, (target, after)
    assert items[target.item_id]["reason"]["code"] == "matches_search"
    assert worker.stop() == 0
