"""Drawings at their own size: rendered pairs, and both models and `auto` scored on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.choice import degradations
from service.imaging.decode import decode_image
from service.imaging.evidence import Evidence, hard_edges, luma
from tests.service.helpers import build_model
from training.research.drawings import (
    JPEG_QUALITY,
    KINDS,
    SIDE,
    lr_file,
    main,
    pair,
    random_drawing,
)


def test_a_drawing_is_the_same_for_the_same_seed() -> None:
    assert random_drawing(3) == random_drawing(3) != random_drawing(4)


def test_each_kind_pairs_the_lr_size_with_four_times_it() -> None:
    for kind in KINDS:
        lr, hr = pair(random_drawing(0), kind)
        assert lr.shape == (SIDE, SIDE, 3) and hr.shape == (4 * SIDE, 4 * SIDE, 3)


def test_the_hard_kind_has_hard_edges_and_the_antialiased_one_has_not() -> None:
    shapes = random_drawing(11)
    hard, antialiased = (luma(pair(shapes, kind)[0]) for kind in ("hard", "antialiased"))
    assert hard_edges(hard) > 0.2 > hard_edges(antialiased)


def test_the_antialiased_sizes_show_the_same_drawing() -> None:
    lr, hr = pair(random_drawing(0), "antialiased")
    reduced = hr.reshape(SIDE, 4, SIDE, 4, 3).mean(axis=(1, 3))
    assert np.abs(reduced - lr).max() <= 1.0


def test_the_hard_sizes_show_the_same_drawing() -> None:
    lr, hr = pair(random_drawing(0), "hard")
    # Each LR pixel's centre lies between HR pixels 1 and 2 of its block: away from the edges,
    # all four agree with it.
    blocks = hr.reshape(SIDE, 4, SIDE, 4, 3)[:, 1:3, :, 1:3]
    agree = np.all(blocks == lr[:, None, :, None], axis=-1).all(axis=(1, 3))
    assert agree.mean() > 0.9


def test_the_jpeg_kinds_are_high_quality_jpegs_that_auto_reads_as_drawings() -> None:
    lr, _ = pair(random_drawing(0), "antialiased-jpeg")
    decoded = decode_image(lr_file(lr, "antialiased-jpeg"), max_pixels=SIDE * SIDE)
    evidence = Evidence.measure(decoded.rgb, decoded.info.jpeg_luma_table)
    assert evidence.jpeg_quality == JPEG_QUALITY
    assert "noiseless" in degradations(evidence)


def test_the_other_kinds_are_png_files() -> None:
    lr, _ = pair(random_drawing(0), "antialiased")
    assert lr_file(lr, "antialiased").startswith(b"\x89PNG")


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        pair(random_drawing(0), "jpeg")


def test_it_scores_every_kind_with_and_without_the_drawings_rules(tmp_path: Path, capsys) -> None:
    clean = build_model(tmp_path / "clean.onnx", seed=1)
    robust = build_model(tmp_path / "robust.onnx", seed=2)
    argv = ["--clean", str(clean), "--robust", str(robust), "--count", "1"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert all(f"| {kind} (1) |" in table for kind in KINDS)
    assert "auto without the drawings' rules" in table


def test_it_writes_drawings_to_train_on(tmp_path: Path) -> None:
    assert main(["--write", str(tmp_path), "--count", "2"]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["drawing_10000.png", "drawing_10001.png"]
    hr = pair(random_drawing(10_000), "antialiased")[1]
    assert np.array_equal(np.asarray(Image.open(tmp_path / written[0])), hr)


@pytest.mark.parametrize(
    "argv",
    [["--clean", "model.onnx"], ["--write", "drawings", "--clean", "model.onnx"], ["--count", "0"]],
    ids=["one-model", "write-and-score", "no-drawings"],
)
def test_contradictory_or_incomplete_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
