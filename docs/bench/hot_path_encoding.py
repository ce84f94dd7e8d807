"""Two per-event encodings of the worker, side by side (session 12).

    python docs/bench/hot_path_encoding.py [REPEATS]   # e.g. 5000

- The list message: a 20-item list with reasons, as `recommendation_bytes` writes it
  (a dict and a `round()` per item) and as session 12 tried to write it (the items as
  one pre-encoded orjson fragment, `'%.6f'` scores; reproduced here, not kept: it
  measured slower). Both documents are checked equal once parsed.
- A pseudonym: `streams.privacy.pseudonym` (a keyed HMAC copied per id) and a new
  HMAC keyed per call (before session 12), checked equal.

Prints microseconds per call, best of 5. Figures: docs/BENCHMARKS.md, "Session 12".
"""

import hashlib
import hmac
import random
import sys
import timeit
from typing import Any

import orjson

from streams.messages import recommendation_bytes
from streams.privacy import pseudonym

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
rng = random.Random(0)
items = [(f"B00{rng.randint(10**6, 10**7)}", rng.random() * 10) for _ in range(20)]
reasons = [("similar_to_viewed", f"B00{rng.randint(10**6, 10**7)}") for _ in range(20)]
fields: dict[str, Any] = dict(
    user_id="u1",
    items=items,
    reasons=reasons,
    model_version="m",
    strategy="sequential",
    trigger_event_id="e1",
    trigger_event_type="click",
    event_ts=1.0,
    produced_ts=2.0,
)


_ITEM = b'{"item_id":%b,"score":%b,"reason":{"code":%b,"item_id":%b}}'


def fragment_message() -> bytes:
    dumps = orjson.dumps
    parts = [
        _ITEM % (dumps(i), b"%.6f" % s, dumps(r[0]), dumps(r[1]))
        for (i, s), r in zip(items, reasons, strict=True)
    ]
    doc = {k: v for k, v in fields.items() if k != "reasons"}
    listed = orjson.Fragment(b"[" + b",".join(parts) + b"]")
    return dumps({"schema_version": 2, **doc, "arm": "control", "items": listed})


def current_message() -> bytes:
    return recommendation_bytes(**fields)


def before_pseudonym() -> str:
    return "p:" + hmac.new(b"key", b"user-123", hashlib.sha256).hexdigest()[:32]


def after_pseudonym() -> str:
    return pseudonym("user-123", "key")


assert orjson.loads(fragment_message()) == orjson.loads(current_message())
assert before_pseudonym() == after_pseudonym()
for name, fn in [
    ("list message, dict per item (kept)", current_message),
    ("list message, one fragment (tried)", fragment_message),
    ("pseudonym, before", before_pseudonym),
    ("pseudonym, after", after_pseudonym),
]:
    best = min(timeit.repeat(fn, number=repeats, repeat=5)) / repeats
    print(f"{name}: {best * 1e6:.2f} us")
