"""`auto` on lossy WebP files: photographs and drawings at each quality, on two tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.helpers import build_model
from training.research.webp import main


def test_it_scores_photographs_and_drawings_at_each_quality(
    image_folder: Path, tmp_path: Path, capsys
) -> None:
    clean = build_model(tmp_path / "clean.onnx", seed=1)
    robust = build_model(tmp_path / "robust.onnx", seed=2)
    argv = ["--clean", str(clean), "--robust", str(robust), "--quality", "50", "95"]
    assert main([*argv, "--data", str(image_folder), "--limit", "2", "--drawings", "1"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("| photographs (2)", "50"),
        ("| photographs (2)", "95"),
        ("| drawings (2)", "50"),
        ("| drawings (2)", "95"),
    ]
    # The quality read from each file is the one it was saved at, give or take one.
    for row in rows:
        low, high = (int(q) for q in row[-1].rstrip(" |").split("–"))
        assert abs(low - int(row[1])) <= 1 and abs(high - int(row[1])) <= 1


@pytest.mark.parametrize(
    "extra", [[], ["--drawings", "1", "--quality", "0"]], ids=["nothing-to-measure", "quality-0"]
)
def test_incomplete_or_wrong_arguments_are_refused(extra: list[str]) -> None:
    argv = ["--clean", "a.onnx", "--robust", "b.onnx", "--quality", "75", *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
