"""The text encoder as deployed: written once by a Job, optional for the worker.

The Job (``recstream text-encoder minilm --out DIR --keep-current``) may run again on
every apply and must then leave a current export alone; the worker may start before
the Job has written anything and must then serve without text, but must stop on a
directory that holds a broken export.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from deploy.settings import Settings
from deploy.text_cli import _is_current
from deploy.worker import load_text_support
from models.text_encoder import (
    ENCODER_FILENAME,
    TOKENIZER_FILENAME,
    TextEncoderMetadata,
    minilm_source,
)


def _fake_export(directory: Path, source: str, max_length: int = 64) -> Path:
    """The three files of an export (contents only as real as `--keep-current` reads)."""
    directory.mkdir(parents=True)
    (directory / ENCODER_FILENAME).write_bytes(b"not a graph")
    (directory / TOKENIZER_FILENAME).write_text("{}")
    TextEncoderMetadata(
        dim=8,
        max_length=max_length,
        pad_id=0,
        inputs=["input_ids", "attention_mask"],
        source=source,
        model_type="bert",
    ).save(directory / "text_encoder.json")
    return directory


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_worker_serves_without_text_until_the_job_has_written_it(
    tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "text-encoder"
    if state == "empty":
        directory.mkdir()
    settings = Settings.defaults().replace(text_encoder_dir=directory)
    with caplog.at_level(logging.WARNING, logger="recstream.worker"):
        assert load_text_support(settings) is None
    [record] = [r for r in caplog.records if r.name == "recstream.worker"]
    assert record.levelno == logging.WARNING
    assert str(directory) in record.getMessage()
    assert "serving without text" in record.getMessage()


def test_worker_stops_on_a_broken_encoder_directory(tmp_path: Path) -> None:
    """Something is there but it is not a loadable export: a configuration error."""
    directory = tmp_path / "text-encoder"
    directory.mkdir()
    (directory / "text_encoder.json").write_text("{}")
    settings = Settings.defaults().replace(text_encoder_dir=directory)
    with pytest.raises(FileNotFoundError, match="encoder.onnx is missing"):
        load_text_support(settings)


def test_unset_encoder_is_no_text_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recstream.worker"):
        assert load_text_support(Settings.defaults()) is None
    assert not [r for r in caplog.records if r.name == "recstream.worker"]


def test_keep_current_leaves_a_current_minilm_export_alone(tmp_path: Path) -> None:
    out = _fake_export(tmp_path / "text-encoder", minilm_source())
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = CliRunner().invoke(
        app, ["text-encoder", "minilm", "--out", str(out), "--keep-current"]
    )
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "change", ["other source", "other max_length", "no tokenizer", "bad metadata"]
)
def test_an_export_of_something_else_or_an_incomplete_one_is_not_current(
    tmp_path: Path, change: str
) -> None:
    out = _fake_export(
        tmp_path / "text-encoder",
        "somewhere/else" if change == "other source" else minilm_source(),
        max_length=32 if change == "other max_length" else 64,
    )
    if change == "no tokenizer":
        (out / TOKENIZER_FILENAME).unlink()
    if change == "bad metadata":
        (out / "text_encoder.json").write_text("[]")
    assert _is_current(out, minilm_source(), 64) is False
    assert _is_current(tmp_path / "nothing-here", minilm_source(), 64) is False


def test_keep_current_skips_a_current_export_of_a_local_encoder(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    out = _fake_export(tmp_path / "text-encoder", str(hf))
    args = ["text-encoder", "export", "--from", str(hf), "--out", str(out), "--keep-current"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
