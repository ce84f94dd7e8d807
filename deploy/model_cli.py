"""``recstream train | evaluate | export | models``: the model side of the CLI.

Registered on the main app by `deploy.cli`. Heavy imports (torch) happen inside the
commands so that ``recstream --help`` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from models.export import Precision
    from models.quality import DatasetFormat, EvaluationRun
    from models.splits import SplitData

__all__ = ["register"]

console = Console(stderr=True)
models_app = typer.Typer(
    help="List, promote and roll back versions in a model store.", no_args_is_help=True
)

_FORMAT_HELP = (
    "sequences: 'user item1 item2 ...' lines, leave-one-out (e.g. Beauty.txt); "
    "sessions: training sessions + --test prefix<TAB>target file (e.g. DIGINETICA); "
    "events: recstream event log (JSON lines or .csv), time split."
)

DataArg = Annotated[Path, typer.Argument(help="Data file (training sessions for 'sessions').")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP)]
TestOpt = Annotated[
    Path | None, typer.Option("--test", help="sessions: the prefix<TAB>target test file.")
]
AttrOpt = Annotated[
    Path | None,
    typer.Option("--attributes", help="Item -> attribute ids JSON (side features)."),
]
MaxSessionsOpt = Annotated[
    int | None,
    typer.Option(help="sessions: train on the most recent N sessions only (CPU budgets)."),
]
ValidFractionOpt = Annotated[
    float,
    typer.Option(
        help="sessions/events: share held out for validation (sessions: at most this "
        "share; the newest sessions that give --max-cases cases).",
        min=0.0,
        max=0.5,
    ),
]
MaxCasesOpt = Annotated[
    int,
    typer.Option(
        help="Validation cases (sessions: only the sessions that give them are held out) "
        "/ cases per window (events)."
    ),
]


def _checkpoint_path(path: Path) -> Path:
    """A run directory's ``checkpoint/`` folder, or ``path`` itself (a .pt or that folder)."""
    return path / "checkpoint" if (path / "checkpoint").is_dir() else path


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    # By name: typer ships its own copy of click, whose enum is not click's.
    return source is not None and source.name == "COMMANDLINE"


def _load_data_split(
    fmt: str,
    data: Path,
    test: Path | None,
    attributes: Path | None,
    max_train_sessions: int | None,
    valid_fraction: float,
    max_cases: int,
    seed: int,
) -> SplitData:
    """The split the data options of `train`, `evaluate` and `tune` describe."""
    from models.quality import load_split

    return load_split(
        _fmt(fmt),
        data,
        test_path=test,
        attributes_path=attributes,
        max_train_sessions=max_train_sessions,
        valid_fraction=valid_fraction,
        max_cases=max_cases,
        seed=seed,
    )


def _fmt(value: str) -> DatasetFormat:
    from models.quality import DatasetFormat

    formats: dict[str, DatasetFormat] = {f: f for f in get_args(DatasetFormat)}
    if value not in formats:
        raise typer.BadParameter("format must be sequences, sessions or events")
    return formats[value]


def _print_run(run: EvaluationRun, title: str) -> None:
    table = Table(title=title)
    keys = ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20", "coverage@10"]
    table.add_column("model")
    for key in keys:
        table.add_column(key, justify="right")
    for row in run.table():
        table.add_row(str(row["model"]), *(f"{row[k]:.4f}" for k in keys))
    Console(width=max(140, Console().width)).print(table)


def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Data file (training sessions for 'sessions'); omit with --from-archive."
        ),
    ] = None,
    fmt: FormatOpt = "sequences",
    test: TestOpt = None,
    attributes: AttrOpt = None,
    out: Annotated[
        Path, typer.Option(help="Run directory: checkpoints, report.json, PNGs.")
    ] = Path("runs/latest"),
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 200,
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget for training (minutes).")
    ] = None,
    patience: Annotated[
        int, typer.Option(help="Evaluations without better validation NDCG@10 before stopping.")
    ] = 4,
    max_len: Annotated[int, typer.Option(help="Sequence length.")] = 50,
    dim: Annotated[int, typer.Option(help="Model width.")] = 64,
    layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 2,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 2,
    dropout: Annotated[float, typer.Option(help="Dropout.")] = 0.2,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-3,
    lr_decay: Annotated[
        float,
        typer.Option(
            help="Multiply the learning rate by this after each evaluation without a better "
            "validation NDCG@10 (1 = constant).",
            min=0.01,
            max=1.0,
        ),
    ] = 0.3,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 128,
    similarity: Annotated[
        str,
        typer.Option(
            help="Output scoring: dot (inner product with the item embeddings) or cosine "
            "(normalised hidden state and items, divided by --temperature)."
        ),
    ] = "cosine",
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature of --similarity cosine.", min=1e-4)
    ] = 0.07,
    arch: Annotated[
        str,
        typer.Option(
            help="Sequence-encoder architecture, a name registered in models/architectures/ "
            "(sasrec: the causal transformer)."
        ),
    ] = "sasrec",
    repeat_head: Annotated[
        bool,
        typer.Option(
            help="Train the repeat-aware head: a learned bias on the scores of items already "
            "in the history (decides when to show an item again; see models/repeat.py)."
        ),
    ] = True,
    transition_head: Annotated[
        bool,
        typer.Option(
            help="Train the transition-prior head: the item-transition chain of the training "
            "data fused into the scores by a learned gate (see models/transitions.py)."
        ),
    ] = False,
    label_smoothing: Annotated[
        float,
        typer.Option(help="Label smoothing of the next-item cross-entropy.", min=0.0, max=0.99),
    ] = 0.0,
    contrastive_weight: Annotated[
        float,
        typer.Option(
            help="Weight of the DuoRec-style contrastive term (two dropout views of each "
            "sequence; see models/contrastive.py). 0 = off.",
            min=0.0,
        ),
    ] = 0.0,
    weight_ema: Annotated[
        float,
        typer.Option(
            help="Decay of a moving average of the weights, updated every step (e.g. 0.999); "
            "validation scores it beside the current weights and keeps the better. 0 = off.",
            min=0.0,
            max=0.9999,
        ),
    ] = 0.0,
    negatives: Annotated[
        int | None,
        typer.Option(
            help="0 = full softmax CE; N = sampled softmax with N negatives (logQ-corrected). "
            "Default: by catalog size (full softmax up to 20,000 items, else 8,192).",
            min=0,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 42,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Training device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda "
            "or cuda:N (fails when CUDA is unavailable). Exports are the same either way."
        ),
    ] = "auto",
    max_train_sessions: MaxSessionsOpt = None,
    valid_fraction: ValidFractionOpt = 0.1,
    max_cases: MaxCasesOpt = 20_000,
    baselines: Annotated[bool, typer.Option(help="Also evaluate the baselines.")] = True,
    item_texts: Annotated[
        Path | None,
        typer.Option(help="Item descriptions (JSON lines item_id/text, or a JSON object)."),
    ] = None,
    text_encoder: Annotated[
        Path | None,
        typer.Option(help="Local Hugging Face encoder directory for --item-texts."),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="Export the trained model (graph, metadata and checkpoint.pt) into this "
            "model store; with --from-archive it is also gated against CURRENT."
        ),
    ] = None,
    promote: Annotated[
        bool,
        typer.Option(
            help="Make the exported version CURRENT (with --from-archive: only if it passes "
            "the gate)."
        ),
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Warm start from this run directory or checkpoint .pt (fine-tune on newer "
            "data, or continue a run): its weights are the starting point (the optimizer "
            "starts afresh at --lr), items are matched by id, and its architecture "
            "(arch, max-len, dim, layers, heads, similarity, temperature) is used. A model "
            "store resolves to its CURRENT version's checkpoint.pt; a store without "
            "CURRENT (the first retrain) trains from scratch."
        ),
    ] = None,
    from_archive: Annotated[
        Path | None,
        typer.Option(
            help="Train on the Parquet event archive DIR/day=YYYY-MM-DD/part-*.parquet "
            "instead of DATA: the newest --holdout-days day folders are the test (and, "
            "with --store, the gate's cases); training and validation use the earlier days."
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(help="--from-archive: read the newest N day folders (default: all).", min=1),
    ] = None,
    holdout_days: Annotated[
        int, typer.Option(help="--from-archive: newest day folders held out for the test.", min=1)
    ] = 1,
    gate_metric: Annotated[
        str,
        typer.Option(
            help="--from-archive with --store: the metric the candidate must win on against "
            "the store's CURRENT model (hr@5/10/20, ndcg@5/10/20, mrr@20), both exported "
            "models ranked on the same held-out cases."
        ),
    ] = "ndcg@10",
    gate_margin: Annotated[
        float,
        typer.Option(
            help="--from-archive with --store: the candidate is promoted only if its gate "
            "metric exceeds the serving model's by more than this."
        ),
    ] = 0.0,
) -> None:
    """Train the transformer, early-stopped on validation NDCG@10, and test it.

    Writes ``OUT/checkpoint/best.pt``, ``OUT/report.json`` (test metrics of the model and
    the baselines), ``OUT/training_curve.png`` and ``OUT/metrics.png``.

    With ``--from-archive`` and ``--store`` the candidate is published into the store
    (with its checkpoint) and gated: with ``--promote`` it becomes CURRENT only if it
    beats the serving model on the held-out days (``--gate-metric``, ``--gate-margin``);
    otherwise CURRENT stays and report.json's ``gate`` section says why. A refused
    candidate stays in the store for inspection.
    """
    from models.architectures import architecture_names
    from models.checkpoint import load_checkpoint
    from models.config import TrainConfig, resolve_device
    from models.metadata import SIMILARITIES
    from models.quality import evaluate_all, write_report
    from models.train import train_model

    if similarity not in SIMILARITIES:
        raise typer.BadParameter(f"--similarity must be one of {', '.join(SIMILARITIES)}")
    if arch not in architecture_names():
        raise typer.BadParameter(f"--arch must be one of {', '.join(architecture_names())}")
    if (data is None) == (from_archive is None):
        raise typer.BadParameter("give exactly one of DATA or --from-archive")
    from models.gate import GATE_METRICS

    if gate_metric not in GATE_METRICS:
        raise typer.BadParameter(
            f"--gate-metric must be one of {', '.join(GATE_METRICS)}", param_hint="--gate-metric"
        )
    try:  # before loading any data: a wrong device fails at once
        console.print(f"training on {resolve_device(device)}")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from exc
    parent = None
    if init_from is not None and _is_store(init_from):
        init_from = _store_checkpoint(init_from)
    if init_from is not None:
        parent_path = _checkpoint_path(init_from)
        if (out / "checkpoint").resolve() == parent_path.resolve() or (
            out.resolve() == init_from.resolve()
        ):
            raise typer.BadParameter("--out must differ from --init-from (it would overwrite it)")
        parent = load_checkpoint(parent_path)
        cfg = parent.config
        inherited: dict[str, object] = {
            "arch": cfg.arch,
            "repeat_head": cfg.repeat_head,
            "transition_head": cfg.transition_head,
            "max_len": cfg.max_len,
            "dim": cfg.dim,
            "layers": cfg.n_layers,
            "heads": cfg.n_heads,
            "similarity": cfg.similarity,
            "temperature": cfg.temperature,
        }
        given: dict[str, object] = {
            "arch": arch,
            "repeat_head": repeat_head,
            "transition_head": transition_head,
            "max_len": max_len,
            "dim": dim,
            "layers": layers,
            "heads": heads,
            "similarity": similarity,
            "temperature": temperature,
        }
        clashes = [
            f"--{name.replace('_', '-')} {given[name]} (the parent has {value})"
            for name, value in inherited.items()
            if _typed(ctx, name) and given[name] != value
        ]
        if clashes:
            raise typer.BadParameter(
                "a warm start keeps the parent's architecture: " + ", ".join(clashes)
            )
        arch, repeat_head, transition_head = cfg.arch, cfg.repeat_head, cfg.transition_head
        max_len, dim, layers, heads = cfg.max_len, cfg.dim, cfg.n_layers, cfg.n_heads
        similarity, temperature = cfg.similarity, cfg.temperature
        console.print(
            f"warm start from {init_from} (best epoch {parent.stats.best_epoch}, "
            f"{parent.vocab.n_items} items; {arch}, max-len {max_len}, dim {dim}, "
            f"{layers} layers, {heads} heads, {similarity} scoring)"
        )

    if from_archive is not None:
        from models.archive import archive_split

        try:
            split = archive_split(
                from_archive,
                days=days,
                holdout_days=holdout_days,
                valid_fraction=valid_fraction,
                max_cases=max_cases,
                seed=seed,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--from-archive") from exc
        if attributes is not None:
            from models.datasets import read_item_attributes

            split.item_attributes = read_item_attributes(attributes)
    else:
        assert data is not None
        split = _load_data_split(
            fmt, data, test, attributes, max_train_sessions, valid_fraction, max_cases, seed
        )
    console.print(
        f"[bold]{split.protocol}[/]: {len(split.train)} training interactions, "
        f"{len(split.valid)} validation / {len(split.test)} test cases"
    )
    config = TrainConfig(
        arch=arch,
        repeat_head=repeat_head,
        transition_head=transition_head,
        label_smoothing=label_smoothing,
        weight_ema=weight_ema,
        contrastive_weight=contrastive_weight,
        max_len=max_len,
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        dropout=dropout,
        lr=lr,
        lr_decay=lr_decay,
        similarity=similarity,
        temperature=temperature,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        val_patience=patience,
        max_minutes=max_minutes,
        n_negatives=negatives,
        num_threads=threads,
        device=device,
    )
    content = _content(item_texts, text_encoder)
    trained = train_model(
        split.train,
        config,
        valid=split.valid,
        item_attributes=split.item_attributes,
        item_content=content,
        checkpoint_dir=out / "checkpoint",
        progress=True,
        init_from=parent,
    )
    if trained.stats.init_from is not None and init_from is not None:
        trained.stats.init_from["checkpoint"] = str(init_from.resolve())
    console.print(
        f"trained in {trained.stats.seconds / 60:.1f} min, best epoch "
        f"{trained.stats.best_epoch} ({trained.stats.stop_reason}); testing..."
    )
    run = evaluate_all(trained, split, baselines=baselines)
    model_row = run.table()[0]
    trained.metrics = {
        k: float(v) for k, v in model_row.items() if k != "model" and isinstance(v, float)
    }
    from models.checkpoint import save_checkpoint

    save_checkpoint(trained, out / "checkpoint" / "best.pt")
    gate: dict[str, Any] | None = None
    if store is not None and from_archive is not None:
        gate = _publish_with_gate(
            trained,
            store,
            split.test,
            promote=promote,
            metric=gate_metric,
            margin=gate_margin,
            threads=threads or 0,
        )
    elif store is not None:
        _export_to_store(trained, store, promote=promote)
    files = [str(p) for p in (data, from_archive, test, attributes) if p is not None]
    path = write_report(
        out,
        trained,
        run,
        command=_command(),
        data_files=files,
        extra=None if gate is None else {"gate": gate},
    )
    _print_run(run, f"test ({split.protocol})")
    console.print(f"report: {path}")


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory or checkpoint .pt file.")],
    data: DataArg,
    fmt: FormatOpt = "sequences",
    test: TestOpt = None,
    attributes: AttrOpt = None,
    max_train_sessions: MaxSessionsOpt = None,
    valid_fraction: ValidFractionOpt = 0.1,
    max_cases: MaxCasesOpt = 20_000,
    on: Annotated[str, typer.Option(help="Which cases: test or valid.")] = "test",
    exclude_history: Annotated[
        bool, typer.Option(help="Mask history items before ranking (not the published setup).")
    ] = False,
    baselines: Annotated[bool, typer.Option(help="Also evaluate the baselines.")] = True,
    category_cap: Annotated[
        list[int] | None,
        typer.Option(
            help="Also rank with at most N items per category in the top 20 (repeatable), "
            "as the worker's RECSTREAM_CATEGORY_CAP does; an item's category is its first "
            "--attributes entry."
        ),
    ] = None,
    onnx_model: Annotated[
        list[Path] | None,
        typer.Option("--onnx", help="Also rank with these exported model dirs / .onnx files."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for capped case lists.")] = 42,
    online: Annotated[
        Path | None,
        typer.Option(
            help="An exported model dir: also replay cases through a live pipeline "
            "(embedded broker + worker) and compare with offline ranking."
        ),
    ] = None,
    online_cases: Annotated[int, typer.Option(help="Cases replayed with --online.")] = 2000,
    out: Annotated[
        Path | None,
        typer.Option(help="Write report.json, metrics.png and training_curve.png here."),
    ] = None,
) -> None:
    """Full-ranking HR/NDCG@{5,10,20}, MRR@20 and coverage@10 of a trained model.

    The dataset must be split as in training (same format and options); the baselines
    are fitted on the same training part.
    """
    from models.checkpoint import load_checkpoint
    from models.quality import evaluate_all

    ckpt = _checkpoint_path(checkpoint)
    trained = load_checkpoint(ckpt)
    split = _load_data_split(
        fmt, data, test, attributes, max_train_sessions, valid_fraction, max_cases, seed
    )
    extra: list[Any] = []
    if onnx_model:
        from models.ranking import OnnxRanker

        extra = [OnnxRanker(p) for p in onnx_model]
    if category_cap:
        from models.diversity import CategoryCapRanker
        from models.evaluate import ModuleRanker

        if not split.item_attributes:
            raise typer.BadParameter("--category-cap needs --attributes (the categories)")
        categories = {
            column: str(attrs[0])
            for item, attrs in split.item_attributes.items()
            if attrs and (column := trained.vocab.index.get(item)) is not None
        }
        extra += [
            CategoryCapRanker(ModuleRanker(trained.module), categories, cap) for cap in category_cap
        ]
    cases = split.test if on == "test" else split.valid
    run = evaluate_all(
        trained,
        split,
        cases=cases,
        baselines=baselines,
        exclude_history=exclude_history,
        extra=extra,
    )
    _print_run(run, f"{on} ({split.protocol})")
    online_result: dict[str, object] | None = None
    if online is not None:
        import json as _json

        from deploy.lab.online_eval import online_vs_offline

        online_result = online_vs_offline(
            list(cases)[:online_cases], online, Path("var/online-eval"), log=console.print
        )
        console.print("online vs offline (same ONNX model, purchases excluded in both):")
        print(_json.dumps(online_result, indent=2))
    if out is not None:
        from models.quality import write_report

        files = [str(p) for p in (data, test, attributes) if p is not None]
        report_extra = {"online_vs_offline": online_result} if online_result else None
        path = write_report(
            out, trained, run, command=_command(), data_files=files, extra=report_extra
        )
        console.print(f"report: {path} (+ metrics.png, training_curve.png)")


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory or checkpoint .pt file.")],
    out: Annotated[Path | None, typer.Option(help="Write a single model directory here.")] = None,
    store: Annotated[
        Path | None, typer.Option(help="Publish into this versioned model store instead.")
    ] = None,
    promote: Annotated[bool, typer.Option(help="Make the new version CURRENT.")] = False,
    variant: Annotated[
        str, typer.Option(help="fp32 (reference), fp16 (CUDA) or int8 (dynamic, CPU).")
    ] = "fp32",
    max_k: Annotated[int | None, typer.Option(help="Top-K size inside the graph.")] = None,
    cold_items: Annotated[
        Path | None,
        typer.Option(help="Texts of new items (no interactions yet) to add to the catalog."),
    ] = None,
    text_encoder: Annotated[
        Path | None, typer.Option(help="Local encoder directory for --cold-items.")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, top-K and exclusions in the graph).

    With ``--cold-items``, items that have a description but no interactions are added
    to the catalog through the model's text projection (models trained with texts).
    """
    from models.checkpoint import load_checkpoint
    from models.export import export_onnx

    if (out is None) == (store is None):
        raise typer.BadParameter("give exactly one of --out or --store")
    ckpt = _checkpoint_path(checkpoint)
    trained = load_checkpoint(ckpt)
    if cold_items is not None:
        from models.content import add_cold_items

        vectors = _content(cold_items, text_encoder)
        assert vectors is not None
        trained = add_cold_items(trained, vectors)
        console.print(f"catalog now has {trained.vocab.n_items} items")
    if max_k is not None:
        from dataclasses import replace

        trained.config = replace(trained.config, max_k=max_k)
    if store is not None:
        _export_to_store(trained, store, promote=promote, variant=variant)
        return
    assert out is not None
    export_onnx(trained, out, variant=_variant(variant))
    console.print(f"exported {variant} model to {out}")


def _content(texts: Path | None, encoder_dir: Path | None) -> Any:
    """Item id -> text embedding, or None without texts."""
    if texts is None:
        return None
    if encoder_dir is None:
        raise typer.BadParameter("item texts need --text-encoder (a local model directory)")
    from models.content import TextEncoder, encode_item_texts
    from models.datasets import read_item_texts

    return encode_item_texts(TextEncoder(encoder_dir), read_item_texts(texts))


def _variant(value: str) -> Precision:
    from models.export import Precision

    precisions: dict[str, Precision] = {p: p for p in get_args(Precision)}
    if value not in precisions:
        raise typer.BadParameter("variant must be fp32, fp16 or int8")
    return precisions[value]


def _free_version(trained: Any, store: Path) -> str:
    """The default version name ("<UTC second>-<data fingerprint>"), a second later while
    the store already has it: two trainings on the same data within one second (a gate
    run publishing its candidate beside CURRENT) must not collide, and names stay in
    publication order."""
    from datetime import UTC, datetime, timedelta

    from models.metadata import make_model_version

    moment = datetime.now(UTC)
    version = make_model_version(trained.data_fingerprint, moment)
    while (store / version).exists():
        moment += timedelta(seconds=1)
        version = make_model_version(trained.data_fingerprint, moment)
    return version


def _export_to_store(trained: Any, store: Path, *, promote: bool, variant: str = "fp32") -> str:
    """Export into the store (graph, metadata and the torch checkpoint); return the version."""
    from models.checkpoint import save_checkpoint
    from models.export import export_onnx
    from models.metadata import CHECKPOINT_FILENAME
    from models.store import ModelStore

    model_store = ModelStore(store)
    staging = model_store.staging_dir()
    export_onnx(
        trained, staging, variant=_variant(variant), model_version=_free_version(trained, store)
    )
    # Kept beside the graph so that `train --init-from STORE` can warm start from it.
    save_checkpoint(trained, staging / CHECKPOINT_FILENAME)
    version = model_store.publish(staging)
    console.print(f"published {version} in {store}")
    if promote:
        model_store.promote(version)
        console.print(f"CURRENT -> {version}")
    return version


def _publish_with_gate(
    trained: Any,
    store: Path,
    cases: Any,
    *,
    promote: bool,
    metric: str,
    margin: float,
    threads: int,
) -> dict[str, Any]:
    """Publish the candidate, gate it against CURRENT and promote it if it passes.

    The candidate is always published (a refused one can be inspected or promoted by
    hand); CURRENT changes only through the gate. Returns report.json's ``gate`` section.
    """
    from models.gate import run_gate
    from models.store import ModelStore

    model_store = ModelStore(store)
    serving = model_store.current_dir() if model_store.current() is not None else None
    version = _export_to_store(trained, store, promote=False)
    decision = run_gate(
        model_store.root / version, serving, cases, metric=metric, margin=margin, threads=threads
    )
    section = decision.to_dict()
    verdict = "passed" if decision.promote else "refused"
    console.print(f"gate {verdict} ({metric}, margin {margin:g}, {decision.n_cases} cases):")
    console.print(decision.reason)
    from models.experiment import read_experiment

    running = read_experiment(model_store)
    promoted = decision.promote and promote and running is None
    if promoted:
        model_store.promote(version)
        console.print(f"CURRENT -> {version}")
    elif decision.promote and running is not None:
        # CURRENT is the control arm of a running A/B test: changing it would change
        # the experiment under way.
        section["reason"] += (
            f"; not promoted: an experiment is running (candidate {running.candidate}); "
            "promote by hand after it ends"
        )
        console.print(f"not promoted: experiment with {running.candidate} is running")
    elif decision.promote:
        section["reason"] += "; not promoted: --promote was not given"
    section["promoted"] = promoted
    section["current"] = model_store.current()
    return section


def _is_store(path: Path) -> bool:
    """Whether ``--init-from`` names a model store: CURRENT, versions, or no files yet
    (a fresh volume, perhaps with only ``lost+found``), rather than a run directory."""
    from models.store import CURRENT_FILENAME, ModelStore

    if not path.is_dir() or (path / "checkpoint").is_dir() or (path / "best.pt").is_file():
        return False
    return (
        (path / CURRENT_FILENAME).is_file()
        or bool(ModelStore(path).versions())
        or not any(p.is_file() for p in path.iterdir())
    )


def _store_checkpoint(store: Path) -> Path | None:
    """CURRENT's checkpoint in a store, or None (train from scratch) when nothing is CURRENT."""
    from models.metadata import CHECKPOINT_FILENAME
    from models.store import ModelStore, StoreError

    model_store = ModelStore(store)
    if model_store.current() is None:
        console.print(f"{store} has no CURRENT version: training from scratch")
        return None
    try:
        path = model_store.current_dir() / CHECKPOINT_FILENAME
    except StoreError as exc:
        raise typer.BadParameter(str(exc), param_hint="--init-from") from exc
    if not path.is_file():
        raise typer.BadParameter(
            f"{store}'s CURRENT version has no {CHECKPOINT_FILENAME} (published before "
            "versions kept their checkpoint): warm start from a run directory instead",
            param_hint="--init-from",
        )
    return path


@models_app.command("list")
def models_list(
    store: Annotated[Path, typer.Argument(help="Model store root.")],
) -> None:
    """List the versions in a store (newest last) and mark CURRENT."""
    from models.store import ModelStore

    model_store = ModelStore(store)
    current = model_store.current()
    print(f"{'':1} {'version':34} {'created':22} {'variant':7} {'ndcg@10':>8} {'hr@10':>8}")
    for info in model_store.list():
        mark = "*" if info.version == current else " "
        ndcg = info.metrics.get("ndcg@10", float("nan"))
        hr = info.metrics.get("hr@10", float("nan"))
        print(
            f"{mark} {info.version:34} {info.created_at:22} {info.variant:7} {ndcg:8.4f} {hr:8.4f}"
        )


@models_app.command("promote")
def models_promote(
    store: Annotated[Path, typer.Argument(help="Model store root.")],
    version: Annotated[str, typer.Argument(help="Version to make CURRENT.")],
) -> None:
    """Point CURRENT at VERSION (atomic; workers polling the store roll forward)."""
    from models.store import ModelStore

    ModelStore(store).promote(version)
    console.print(f"CURRENT -> {version}")


@models_app.command("rollback")
def models_rollback(
    store: Annotated[Path, typer.Argument(help="Model store root.")],
) -> None:
    """Point CURRENT back at the version that was current before the latest promotion."""
    from models.store import ModelStore, StoreError

    try:
        version = ModelStore(store).rollback()
    except StoreError as exc:
        console.print(f"[red]rollback refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"CURRENT -> {version}")


@models_app.command("latency")
def models_latency(
    model_dirs: Annotated[list[Path], typer.Argument(help="Model directories or stores.")],
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 2,
    repeats: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 30,
) -> None:
    """Median CPU latency of one inference call at batch sizes 1, 64 and 256."""
    from models.export import measure_latency
    from models.metadata import ModelMetadata
    from models.store import resolve_model_dir

    print(f"{'model':44} {'variant':7} {'MB':>6} {'b=1 ms':>8} {'b=64 ms':>8} {'b=256 ms':>9}")
    for path in model_dirs:
        model_dir = resolve_model_dir(path)
        meta = ModelMetadata.load(model_dir)
        size = (model_dir / "model.onnx").stat().st_size / 1e6
        ms = measure_latency(model_dir, threads=threads, repeats=repeats)
        print(
            f"{meta.model_version:44} {meta.variant:7} {size:6.1f} "
            f"{ms[1]:8.2f} {ms[64]:8.2f} {ms[256]:9.2f}"
        )


def _command() -> str:
    return "recstream " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate``, ``export``, ``tune`` and ``models`` to the ``recstream`` app."""
    app.command()(train)
    app.command()(evaluate)
    app.command()(export)
    from deploy.tune_cli import tune

    app.command()(tune)
    app.add_typer(models_app, name="models")
    from deploy.experiment_cli import experiment_app

    models_app.add_typer(experiment_app, name="experiment")
