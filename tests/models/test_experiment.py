"""A/B experiments: stable user split, the store's EXPERIMENT file, the z-test and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deploy.experiment_cli import read_arm_counts
from deploy.model_cli import register
from models.experiment import (
    CANDIDATE,
    CONTROL,
    EXPERIMENT_FILENAME,
    Experiment,
    assign_arm,
    experiment_id,
    promote_candidate,
    read_experiment,
    start_experiment,
    stop_experiment,
    two_proportion_z_test,
)
from models.store import ModelStore, StoreError

USERS = [f"user-{n:05d}" for n in range(10_000)]


def make_store(root: Path, *versions: str) -> ModelStore:
    store = ModelStore(root)
    for version in versions:
        (root / version).mkdir(parents=True)
        (root / version / "model.onnx").write_bytes(b"onnx")
        (root / version / "metadata.json").write_text(json.dumps({"model_version": version}))
    return store


def test_the_split_is_stable_and_respects_the_share() -> None:
    arms = [assign_arm(u, 0.1, "salt-1") for u in USERS]
    assert arms == [assign_arm(u, 0.1, "salt-1") for u in USERS]
    share = arms.count(CANDIDATE) / len(USERS)
    assert abs(share - 0.1) < 0.01  # binomial sd at 10k: 0.003
    assert set(arms) == {CONTROL, CANDIDATE}
    # A bigger share only moves users into the candidate arm (no reshuffle).
    wider = [assign_arm(u, 0.3, "salt-1") for u in USERS]
    assert all(w == CANDIDATE for a, w in zip(arms, wider, strict=True) if a == CANDIDATE)
    assert abs(wider.count(CANDIDATE) / len(USERS) - 0.3) < 0.015
    # Another salt (a new experiment) draws another candidate group.
    other = [assign_arm(u, 0.1, "salt-2") for u in USERS]
    overlap = sum(a == b == CANDIDATE for a, b in zip(arms, other, strict=True))
    assert overlap < 0.02 * len(USERS)  # independent: about 1 %
    assert {assign_arm(u, 0.0, "s") for u in USERS[:500]} == {CONTROL}
    assert {assign_arm(u, 1.0, "s") for u in USERS[:500]} == {CANDIDATE}


def test_the_split_is_the_same_in_another_process() -> None:
    code = (
        "import sys; from models.experiment import assign_arm; "
        "print(''.join('1' if assign_arm(f'user-{n:05d}', 0.25, 'abc') == 'candidate' "
        "else '0' for n in range(2000)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    here = "".join("1" if assign_arm(u, 0.25, "abc") == CANDIDATE else "0" for u in USERS[:2000])
    assert out == here


def test_experiment_round_trip_in_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "v1", "v2")
    assert read_experiment(store) is None
    with pytest.raises(StoreError, match="no CURRENT"):
        start_experiment(store, "v2", 0.1)
    store.promote("v1")
    with pytest.raises(StoreError, match="unknown version"):
        start_experiment(store, "v9", 0.1)
    with pytest.raises(StoreError, match="CURRENT already"):
        start_experiment(store, "v1", 0.1)
    with pytest.raises(StoreError, match="share"):
        start_experiment(store, "v2", 0.0)
    started = start_experiment(store, "v2", 0.2, salt="pepper")
    assert read_experiment(store) == started
    assert (started.candidate, started.share, started.salt) == ("v2", 0.2, "pepper")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", started.started_at)
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
    assert Experiment.from_json(started.to_json()) == started
    assert stop_experiment(store) == started
    assert read_experiment(store) is None and stop_experiment(store) is None
    # A random salt by default: two experiments split users differently.
    a, b = start_experiment(store, "v2", 0.5), start_experiment(store, "v2", 0.5)
    assert a.salt != b.salt and read_experiment(store) == b
    assert promote_candidate(store) == b
    assert store.current() == "v2" and read_experiment(store) is None
    assert store.history()[-1][1:] == ("promote", "v1", "v2")
    with pytest.raises(StoreError, match="no experiment"):
        promote_candidate(store)


def test_a_malformed_experiment_file_is_an_error(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "v1")
    (store.root / EXPERIMENT_FILENAME).write_text('{"candidate": "v1"}')
    with pytest.raises(StoreError, match="malformed"):
        read_experiment(store)
    (store.root / EXPERIMENT_FILENAME).write_text(
        '{"candidate": "v1", "share": 2, "salt": "s", "started_at": ""}'
    )
    with pytest.raises(StoreError, match="share"):
        read_experiment(store)


def test_z_test_against_a_hand_computed_value() -> None:
    # 100/1000 vs 130/1000: pooled p = 230/2000 = 0.115,
    # se = sqrt(0.115 * 0.885 * (1/1000 + 1/1000)) = sqrt(0.00020355) = 0.0142671,
    # z = (0.13 - 0.10) / 0.0142671 = 2.10274; two-sided p = erfc(z / sqrt 2) = 0.035488.
    z, p = two_proportion_z_test(100, 1000, 130, 1000)
    assert z == pytest.approx(2.10274, abs=1e-5)
    assert p == pytest.approx(0.035488, abs=1e-6)
    z, p = two_proportion_z_test(130, 1000, 100, 1000)
    assert z == pytest.approx(-2.10274, abs=1e-5) and p == pytest.approx(0.035488, abs=1e-6)
    assert two_proportion_z_test(50, 500, 50, 500) == (0.0, 1.0)
    assert two_proportion_z_test(0, 0, 3, 10) == (0.0, 1.0)
    assert two_proportion_z_test(0, 10, 0, 10) == (0.0, 1.0)


#: The id of the experiment the CLI test starts (salt "s").
EXP = experiment_id("s")


def metrics_page(
    lists: list[tuple[str, str, str, float]], hits: list[tuple[str, str, str, str, float]]
) -> str:
    """A worker's page: lists by (version, arm, experiment), hits with the event type first."""
    lines = ["# TYPE recstream_recommendations_total counter"]
    lines += [
        f'recstream_recommendations_total{{model_version="{v}",arm="{a}",experiment="{x}"}} {n}'
        for v, a, x, n in lists
    ]
    lines.append("# TYPE recstream_recommendation_hits_total counter")
    lines += [
        f'recstream_recommendation_hits_total{{event_type="{t}",model_version="{v}",arm="{a}",'
        f'experiment="{x}"}} {n}'
        for t, v, a, x, n in hits
    ]
    return "\n".join(lines) + "\n"


PAGE_1 = metrics_page(
    [
        ("v1", "control", EXP, 600.0),
        ("v2", "candidate", EXP, 400.0),
        ("v0", "candidate", EXP, 77.0),
    ],
    [
        ("click", "v1", "control", EXP, 60.0),
        ("purchase", "v1", "control", EXP, 6.0),
        ("click", "v2", "candidate", EXP, 50.0),
        ("click", "v0", "candidate", EXP, 9.0),
    ],
) + (
    "# HELP recstream_recommendations_produced_total Lists by strategy.\n"
    "# TYPE recstream_recommendations_produced_total counter\n"
    'recstream_recommendations_produced_total{strategy="sequential"} 1077.0\n'
)
PAGE_2 = metrics_page(
    [("v1", "control", EXP, 400.0), ("v2", "candidate", EXP, 600.0)],
    [("click", "v1", "control", EXP, 40.0), ("click", "v2", "candidate", EXP, 80.0)],
)
#: PAGE_2 on a worker that served days before the experiment started: control-arm
#: series of earlier traffic (no experiment, and an earlier one) with a far lower
#: hit rate, and the earlier experiment's candidate arm.
PAGE_2_WITH_HISTORY = metrics_page(
    [
        ("v1", "control", EXP, 400.0),
        ("v2", "candidate", EXP, 600.0),
        ("v0", "control", "none", 90000.0),
        ("v1", "control", "none", 50000.0),
        ("v1", "control", "0badc0de", 7000.0),
        ("v2", "candidate", "0badc0de", 3000.0),
    ],
    [
        ("click", "v1", "control", EXP, 40.0),
        ("click", "v2", "candidate", EXP, 80.0),
        ("click", "v0", "control", "none", 900.0),
        ("click", "v1", "control", "none", 500.0),
        ("click", "v1", "control", "0badc0de", 70.0),
        ("click", "v2", "candidate", "0badc0de", 3.0),
    ],
)


def test_arm_counts_are_summed_over_workers() -> None:
    arms = read_arm_counts([PAGE_1, PAGE_2], {CANDIDATE: "v2"}, EXP)
    assert arms[CONTROL].lists == 1000 and arms[CONTROL].hits == {"click": 100, "purchase": 6}
    assert arms[CANDIDATE].lists == 1000 and arms[CANDIDATE].hits == {"click": 130}
    assert arms[CANDIDATE].rate("click") == pytest.approx(0.13)
    assert read_arm_counts([PAGE_1])[CANDIDATE].lists == 477  # every version


def test_arm_counts_leave_out_series_from_before_the_experiment() -> None:
    """Control-arm lists outside the running experiment (the same worker's earlier
    traffic, earlier versions, an earlier experiment) are not compared with it."""
    arms = read_arm_counts([PAGE_1, PAGE_2_WITH_HISTORY], {CANDIDATE: "v2"}, EXP)
    assert arms == read_arm_counts([PAGE_1, PAGE_2], {CANDIDATE: "v2"}, EXP)
    assert arms[CONTROL].lists == 1000 and arms[CONTROL].hits == {"click": 100, "purchase": 6}
    # Without the filter, the worker's history swamps the control arm.
    assert read_arm_counts([PAGE_2_WITH_HISTORY], {CANDIDATE: "v2"})[CONTROL].lists == 147400


def test_experiment_id_is_short_stable_and_per_salt() -> None:
    assert EXP == experiment_id("s") == Experiment("v2", 0.1, "s", "").id
    assert re.fullmatch(r"[0-9a-f]{8}", EXP)
    assert experiment_id("t") != EXP


@pytest.fixture
def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


def test_experiment_cli(app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path / "store", "v1", "v2")
    root = str(store.root)
    runner = CliRunner()
    result = runner.invoke(app, ["models", "experiment", "start", root, "v2", "--share", "0.1"])
    assert result.exit_code == 1 and "noCURRENT" in re.sub(r"\s", "", result.output)
    store.promote("v1")
    result = runner.invoke(
        app, ["models", "experiment", "start", root, "v2", "--share", "0.1", "--salt", "s"]
    )
    assert result.exit_code == 0, result.output
    running = read_experiment(store)
    assert running is not None
    assert (running.candidate, running.share, running.salt) == ("v2", 0.1, "s")

    # The second worker served (and counted control lists) before the experiment.
    pages = {"http://w1:6066/metrics": PAGE_1, "http://w2:6066/metrics": PAGE_2_WITH_HISTORY}
    monkeypatch.setattr("deploy.experiment_cli._fetch", pages.__getitem__)
    result = runner.invoke(
        app,
        ["models", "experiment", "status", root, *(a for u in pages for a in ("--metrics", u))],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "v2 for 10.0% of users" in out
    assert re.search(r"control\s+1000\s+10\.0000%\s+0\.0000%\s+0\.6000%", out), out
    assert re.search(r"candidate\s+1000\s+13\.0000%", out), out
    assert "click      candidate - control: z = +2.103, p = 0.03549" in out
    assert "users are what is randomised" in out and "optimistic" in out

    result = runner.invoke(app, ["models", "experiment", "promote", root])
    assert result.exit_code == 0, result.output
    assert store.current() == "v2" and read_experiment(store) is None
    result = runner.invoke(app, ["models", "experiment", "promote", root])
    assert result.exit_code == 1
    runner.invoke(app, ["models", "experiment", "start", root, "v1", "--share", "0.5"])
    assert read_experiment(store) is not None
    result = runner.invoke(app, ["models", "experiment", "stop", root])
    assert result.exit_code == 0 and read_experiment(store) is None


def test_a_worker_starts_with_the_running_experiment(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded before serving, so a user is in the same arm right after a restart."""
    import shutil

    from deploy.settings import Settings
    from deploy.worker import build_app

    store = ModelStore(tmp_path / "store")
    for version in ("v1", "v2"):
        shutil.copytree(tiny_model_dir, tmp_path / f"staging-{version}")
        store.publish(tmp_path / f"staging-{version}", version)
    store.promote("v1")
    start_experiment(store, "v2", 0.3, salt="s")
    monkeypatch.chdir(tmp_path)  # no .env from the repository
    settings = Settings().replace(
        model_dir=store.root,
        provider="cpu",
        max_batch=1,
        state_dir=tmp_path / "state",
        web_enabled=False,
    )
    pipeline = build_app(settings).pipeline
    assert pipeline.experiment is not None
    experiment, candidate = pipeline.experiment
    assert experiment == read_experiment(store)
    assert pipeline.scorer is not candidate
