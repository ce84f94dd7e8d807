"""Erasure in the archive: time `streams.archive.erase_from_parts` on a synthetic archive.

    python docs/bench/archive_erasure.py FILES ROWS_PER_FILE   # e.g. 600 5000

Builds FILES part files of ROWS_PER_FILE rows over 100,000 users, then erases a user
no file holds, one user, and 100 users at once; prints files scanned / read /
rewritten, rows removed and seconds. Figures: docs/BENCHMARKS.md, "Erasure in the archive".
"""

import random
import sys
import tempfile
import time
from pathlib import Path

from streams.archive import erase_from_parts, write_part

root = Path(tempfile.mkdtemp(prefix="h18bench"))
rng = random.Random(0)
files, rows_per = int(sys.argv[1]), int(sys.argv[2])
t0 = time.perf_counter()
users = [f"user-{i:06d}" for i in range(100_000)]
off = 0
for f in range(files):
    day = f"2026-11-{1 + f % 30:02d}"
    rows = []
    for _ in range(rows_per):
        rows.append(
            dict(
                event_id=f"e{off}",
                user_id=rng.choice(users),
                item_id="sku-%d" % rng.randrange(5000),
                event_type="click",
                ts=1.79e9,
                channel="web",
                order_id=None,
                quantity=None,
                price=None,
                dwell_ms=None,
                topic="clicks",
                partition=f % 4,
                offset=off,
            )
        )
        off += 1
    write_part(root, day, rows)
print("built", files, "files", files * rows_per, "rows in", round(time.perf_counter() - t0, 1), "s")
for target in ["absent-user", users[123]]:
    t = time.perf_counter()
    d = erase_from_parts(root, {target: 2e9})
    dt = time.perf_counter() - t
    print(
        target,
        "scanned",
        d.scanned,
        "read",
        d.read,
        "rewritten",
        len(d.rewritten),
        "rows",
        d.rows,
        f"{dt:.2f}s",
        f"{dt / d.scanned * 1000:.2f} ms/file",
    )
t = time.perf_counter()
d = erase_from_parts(root, {u: 2e9 for u in users[1000:1100]})
dt = time.perf_counter() - t
print("100 users", "read", d.read, "rewritten", len(d.rewritten), "rows", d.rows, f"{dt:.2f}s")
