"""``recstream tune``: hyper-parameter search (Optuna) on validation cases only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.model_cli import (
    AttrOpt,
    DataArg,
    FormatOpt,
    MaxCasesOpt,
    MaxSessionsOpt,
    TestOpt,
    ValidFractionOpt,
    _command,
    _load_data_split,
)

console = Console()


def tune(
    data: DataArg,
    fmt: FormatOpt = "sequences",
    test: TestOpt = None,
    attributes: AttrOpt = None,
    out: Annotated[
        Path, typer.Option(help="Output: best_config.json, trials.csv, search.png.")
    ] = Path("runs/tune"),
    budget_minutes: Annotated[
        float, typer.Option(help="Wall-clock budget of the whole search (minutes).", min=0.01)
    ] = 60.0,
    trials: Annotated[
        int | None, typer.Option(help="Stop after N trials (default: when the budget is spent).")
    ] = None,
    trial_minutes: Annotated[
        float | None, typer.Option(help="Budget of one trial (default: what is left).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per trial.")] = 200,
    patience: Annotated[
        int, typer.Option(help="Evaluations without better validation NDCG@10 before stopping.")
    ] = 4,
    arch: Annotated[str, typer.Option(help="Architecture (not searched).")] = "sasrec",
    repeat_head: Annotated[bool, typer.Option(help="Repeat-aware head (not searched).")] = True,
    transition_head: Annotated[
        bool, typer.Option(help="Transition-prior head (not searched).")
    ] = False,
    negatives: Annotated[
        int | None,
        typer.Option(
            help="0 = full softmax CE; N = sampled softmax (not searched). Default: by "
            "catalog size, as in train.",
            min=0,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per step (not searched).")] = 128,
    max_len: Annotated[int, typer.Option(help="Sequence length (not searched).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the sampler, the split and training.")] = 42,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_train_sessions: MaxSessionsOpt = None,
    valid_fraction: ValidFractionOpt = 0.1,
    max_cases: MaxCasesOpt = 20_000,
) -> None:
    """Search learning rate, dropout, width, depth, temperature, lr decay and weight
    decay with Optuna (TPE, median pruning of trials behind at the same epoch).

    Every trial is judged on the validation cases only; the test cases are never scored.
    Writes ``OUT/best_config.json`` (train with it: its ``config`` maps onto ``recstream
    train``'s options), ``OUT/trials.csv`` and ``OUT/search.png``.
    """
    from models.config import TrainConfig
    from models.tune import SEARCH_SPACE, write_results
    from models.tune import tune as run_search

    split = _load_data_split(
        fmt, data, test, attributes, max_train_sessions, valid_fraction, max_cases, seed
    )
    try:
        base = TrainConfig(
            arch=arch,
            repeat_head=repeat_head,
            transition_head=transition_head,
            max_len=max_len,
            batch_size=batch_size,
            epochs=epochs,
            val_patience=patience,
            n_negatives=negatives,
            seed=seed,
            num_threads=threads,
            device=device,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(
        f"[bold]{split.protocol}[/]: {len(split.train)} training interactions, "
        f"{len(split.valid)} validation cases (the {len(split.test)} test cases are not used)"
    )
    for name, space in SEARCH_SPACE.items():
        console.print(f"  {name}: {space}")
    result = run_search(
        split.train,
        split.valid,
        base,
        budget_minutes=budget_minutes,
        n_trials=trials,
        trial_minutes=trial_minutes,
        item_attributes=split.item_attributes,
        seed=seed,
    )
    path = write_results(
        result,
        out,
        extra={
            "command": _command(),
            "data_files": [str(p) for p in (data, test, attributes) if p is not None],
            "protocol": split.protocol,
        },
    )
    states = [t.state for t in result.trials]
    console.print(
        f"{len(states)} trials ({states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned) in {result.minutes:.1f} min; best #{result.best_trial}: "
        f"validation ndcg@10 {result.best_value:.4f}"
    )
    console.print(f"best config: {path}")
