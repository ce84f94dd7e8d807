"""deploy.lab.profile: shares of py-spy's collapsed stacks, and sampling a process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.lab.bench import start_py_spy, stop_py_spies
from deploy.lab.profile import read_collapsed, summarise


def test_shares_are_inclusive_and_self_with_lines_merged_and_wrappers_left_out(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "w.txt"
    raw.write_text(
        "<module> (a/run.py:1);loop (x/agents.py:10);get (y/table.py:5) 5\n"
        "<module> (a/run.py:1);loop (x/agents.py:12);put (y/table.py:9) 3\n"
        "<module> (a/run.py:1);step (x/agents.py:20);get (y/table.py:5) 1\n"
        "run (t/thread.py:1);infer (m/scorer.py:3) 1\n"
    )
    total, shares = summarise(raw)
    assert total == 10
    by_name = {s.function: s for s in shares}
    # On every stack of its thread: a wrapper, not a place where time goes.
    assert "<module> (a/run.py)" not in by_name and "run (t/thread.py)" not in by_name
    loop = by_name["loop (x/agents.py)"]  # lines 10 and 12 are one function
    assert (loop.inclusive, loop.self) == (80.0, 0.0)
    assert by_name["get (y/table.py)"].inclusive == 60.0
    assert by_name["put (y/table.py)"].self == 30.0
    assert by_name["infer (m/scorer.py)"].self == 10.0  # all of its thread, but its own
    assert [s.inclusive for s in shares] == sorted((s.inclusive for s in shares), reverse=True)


def test_a_recursive_function_counts_once_per_sample(tmp_path: Path) -> None:
    raw = tmp_path / "r.txt"
    raw.write_text("m (m/x.py:0);f (m/x.py:1);f (m/x.py:2);g (m/x.py:3) 4\nm (m/x.py:0) 1\n")
    assert read_collapsed(raw)[0] == (["m (m/x.py)", "f (m/x.py)", "f (m/x.py)", "g (m/x.py)"], 4)
    _, shares = summarise(raw)
    assert {s.function: s.inclusive for s in shares}["f (m/x.py)"] == 80.0


def test_py_spy_samples_a_running_process_until_stopped(tmp_path: Path) -> None:
    if not Path(sys.executable).with_name("py-spy").exists():
        pytest.skip("py-spy not installed (the test extra has it)")
    busy = subprocess.Popen(
        [sys.executable, "-c", "def spin():\n    while True: sum(range(1000))\nspin()"]
    )
    out = tmp_path / "busy.txt"
    try:
        spy = start_py_spy(busy.pid, out)
        time.sleep(2.0)
        if spy.poll() is not None and not out.exists():
            pytest.skip("py-spy cannot attach here (ptrace not permitted)")
        stop_py_spies([spy])
    finally:
        busy.kill()
        busy.wait()
    total, shares = summarise(out)
    assert total > 20
    assert any(s.function.startswith("spin ") and s.inclusive > 90 for s in shares)
