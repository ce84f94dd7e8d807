"""One-off measurement behind the archive's format: Parquet (pyarrow) vs JSON lines (orjson).

``python -m deploy.lab.archive_format [--events 100000]`` writes the same synthetic
archive rows (:data:`streams.archive.SCHEMA`) as one Parquet file per codec and as
JSON lines, and prints the size on disk, the write throughput (rows -> durable file,
as the archiver does it: from row dicts, fsync'd) and the read time (best of 3).
The numbers and the decision are in docs/BENCHMARKS.md ("Archive format").
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from streams.archive import SCHEMA

__all__ = ["main", "synthetic_rows"]


def synthetic_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` archive rows shaped like a shop's stream (60 % clicks, 35 % browses, 5 % buys)."""
    rng = random.Random(seed)
    start = 1_790_000_000.0
    rows = []
    for i in range(n):
        kind = rng.choices(("click", "browse", "purchase"), (60, 35, 5))[0]
        buy = kind == "purchase"
        partition = rng.randrange(4)
        rows.append(
            {
                "event_id": f"{rng.getrandbits(128):032x}",
                "user_id": f"user-{rng.randrange(50_000):06d}",
                "item_id": f"sku-{int(rng.paretovariate(1.2)) % 20_000:05d}",
                "event_type": kind,
                "ts": start + i * 0.05 + rng.random(),
                "channel": rng.choice(("web", "web", "app", "store")),
                "order_id": f"order-{rng.getrandbits(40):010x}" if buy else None,
                "quantity": rng.randint(1, 3) if buy else None,
                "price": round(rng.uniform(1, 200), 2) if buy else None,
                "dwell_ms": rng.randrange(100, 60_000) if kind == "browse" else None,
                "topic": kind + "s",
                "partition": partition,
                "offset": i,
            }
        )
    return rows


def _durable(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as out:
        write(out)
        out.flush()
        os.fsync(out.fileno())


def _to_dicts(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]  # untyped pyarrow


def _best(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    """Print one line per format."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    rows = synthetic_rows(args.events)
    n = len(rows)
    print(f"{n} events; nproc={os.cpu_count()}")
    print(f"{'format':22s} {'MiB':>7s} {'B/event':>8s} {'write ev/s':>11s} {'read s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("zstd", "snappy", "none"):
            path = Path(tmp) / f"part-{codec}.parquet"

            def write_parquet(path: Path = path, codec: str = codec) -> None:
                table = pa.Table.from_pylist(rows, schema=SCHEMA)
                _durable(path, lambda out: pq.write_table(table, out, compression=codec))

            write_s = _best(3, write_parquet)
            read_s = _best(3, partial(pq.read_table, path))
            rows_s = _best(3, partial(_to_dicts, path))
            size = path.stat().st_size
            print(
                f"{'parquet/' + codec:22s} {size / 2**20:7.2f} {size / n:8.1f} "
                f"{n / write_s:11,.0f} {read_s:8.3f}  (to Python dicts: {rows_s:.3f} s)"
            )
        path = Path(tmp) / "part.jsonl"

        def write_jsonl() -> None:
            data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
            _durable(path, lambda out: out.write(data))

        def read_jsonl() -> list[Any]:
            with open(path, "rb") as src:
                return [orjson.loads(line) for line in src]

        write_s = _best(3, write_jsonl)
        read_s = _best(3, read_jsonl)
        size = path.stat().st_size
        print(
            f"{'jsonl/orjson':22s} {size / 2**20:7.2f} {size / n:8.1f} "
            f"{n / write_s:11,.0f} {read_s:8.3f}  (dicts)"
        )


if __name__ == "__main__":
    main()
