"""Seed the docker compose stack: a trained model and a file of events to replay.

Runs once in the training image (compose service ``seed``), with the same synthetic
shop and hyper-parameters as ``recstream demo``:

* trains the transformer on all but the last ``--live`` events and exports it to
  ``<models>/current`` (model.onnx + metadata.json), where the worker's
  ``RECSTREAM_MODEL_DIR`` points;
* writes the last ``--live`` events as JSON lines to ``<data>/live-events.jsonl``,
  which the ``replay`` service sends with ``recstream produce``.

It does nothing when both already exist (compose restarts are cheap). Once
``recstream train`` / ``recstream export`` land, this can become those commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/models"))
    parser.add_argument("--data", type=Path, default=Path("/data"))
    parser.add_argument("--live", type=int, default=3000, help="events kept for the replay")
    args = parser.parse_args(argv)

    model_dir = args.models / "current"
    events_file = args.data / "live-events.jsonl"
    if (model_dir / "model.onnx").exists() and events_file.exists():
        print(f"already seeded: {model_dir}, {events_file}")
        return 0

    from models.export import export_onnx
    from models.synthetic import generate_shop
    from models.train import TrainConfig, train_model

    shop = generate_shop(n_items=800, n_users=1500, seed=7)
    cut = max(1, len(shop.events) - args.live)
    history, live = shop.events[:cut], shop.events[cut:]
    config = TrainConfig(max_len=30, dim=64, n_layers=2, n_heads=2, epochs=8, seed=7)
    trained = train_model([e.to_interaction() for e in history], config, progress=True)
    export_onnx(trained, model_dir)
    args.data.mkdir(parents=True, exist_ok=True)
    tmp = events_file.with_suffix(".tmp")
    with tmp.open("w") as out:
        for event in live:
            row = {k: v for k, v in dataclasses.asdict(event).items() if v is not None}
            out.write(json.dumps(row) + "\n")
    tmp.replace(events_file)
    print(f"model in {model_dir}; {len(live)} events in {events_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
