"""Two trainings on the same data within one second publish under different versions."""

from pathlib import Path
from types import SimpleNamespace

from deploy.model_cli import _free_version


def test_a_taken_version_moves_to_the_next_free_second(tmp_path: Path) -> None:
    trained = SimpleNamespace(data_fingerprint="ab12cd34" * 4)
    first = _free_version(trained, tmp_path)
    assert first.endswith("-ab12cd34")
    (tmp_path / first).mkdir()
    second = _free_version(trained, tmp_path)
    (tmp_path / second).mkdir()
    third = _free_version(trained, tmp_path)
    assert len({first, second, third}) == 3
    assert first < second < third  # names stay in publication order
