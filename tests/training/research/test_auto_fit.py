"""Fitting `auto`'s thresholds: on hand-made scores, and end to end on two tiny models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from service.core.choice import THRESHOLDS
from tests.service.helpers import build_model
from training.degradations import CATEGORIES
from training.research.auto_fit import choices, fit, losses, misses
from training.research.auto_fit import main as auto_fit


def scores(noise: float, clean: float, robust: float) -> list[dict]:
    """One image under every category: its measures (no JPEG, sharp, unaliased) and PSNRs."""
    measures = {
        "jpeg_quality": None,
        "webp_quality": None,
        "noise": noise,
        "sharpness": 0.9,
        "aliasing": 0.5,
        "hard_edges": 0.0,
        "flat": 0.02,
    }
    return [
        {"image": str(noise), "category": c, "clean": clean, "robust": robust, "measures": measures}
        for c in CATEGORIES
    ]


def test_the_fit_sends_each_image_to_its_better_model() -> None:
    # A faintly noisy image the robust model does better on, and a clean one: only a noise
    # threshold between 1.0 and 2.2 sends both to the better model.
    rows = scores(2.2, clean=30.0, robust=31.0) + scores(1.0, clean=32.0, robust=31.0)
    assert THRESHOLDS.noise > 2.2  # the service's thresholds send both to the clean model
    fitted = fit(rows)
    assert fitted.noise == 2.0
    for loss, robust_share in losses(rows, choices(rows, fitted)).values():
        assert loss > 0 and robust_share == 0.5  # better than either model alone


def test_the_fit_avoids_a_visible_miss_that_the_mean_would_take() -> None:
    # Noise 2.2: the robust model is 1.1 dB better. Noise 2.7: the clean model is 0.5 dB better
    # (three images). Noise 3.2: the robust model, by far. Sending 2.2 and 2.7 to the clean model
    # wins on the mean (3 x 0.5 > 1.1) but loses 1.1 dB on one image, which anyone sees.
    rows = scores(2.2, clean=30.0, robust=31.1) + scores(3.2, clean=28.0, robust=31.0)
    rows += 3 * scores(2.7, clean=32.0, robust=31.5)
    fitted = fit(rows)
    assert fitted.noise == 2.0
    assert misses(rows, choices(rows, fitted)) == 0
    by_mean = dataclasses.replace(fitted, noise=3.0)
    assert misses(rows, choices(rows, by_mean)) == len(CATEGORIES)
    mean_loss = losses(rows, choices(rows, by_mean))["clean"][0]
    assert mean_loss > losses(rows, choices(rows, fitted))["clean"][0]


def test_the_fit_keeps_the_budget_before_counting_misses() -> None:
    # Avoiding the one miss (noise 2.2 to the robust model) would send ten images to the model
    # 0.5 dB worse: 0.45 dB over the category, beyond the 0.1 dB budget. The miss is kept.
    rows = scores(2.2, clean=30.0, robust=31.1) + 10 * scores(2.7, clean=32.0, robust=31.5)
    fitted = fit(rows)
    assert fitted.noise >= 3.0
    assert misses(rows, choices(rows, fitted)) == len(CATEGORIES)


def test_it_scores_training_images_and_refits_saved_scores(
    image_folder: Path, tmp_path: Path, capsys
) -> None:
    clean = build_model(tmp_path / "clean.onnx", seed=1)
    robust = build_model(tmp_path / "robust.onnx", seed=2)
    rows = tmp_path / "rows.json"
    argv = ["--clean", str(clean), "--robust", str(robust), "--data", str(image_folder)]
    assert auto_fit([*argv, "--limit", "2", "--per-image", str(rows)]) == 0
    scored = json.loads(rows.read_text())
    assert len({row["image"] for row in scored}) == 2
    assert len(scored) == 2 * len(CATEGORIES)
    first = capsys.readouterr().out
    assert "fitted:" in first and "| jpeg-30 |" in first
    assert auto_fit(["--rows", str(rows)]) == 0
    assert capsys.readouterr().out.split("fitted:")[1] == first.split("fitted:")[1]


def test_it_refuses_to_fit_benchmark_scores(tmp_path: Path) -> None:
    rows = tmp_path / "bench.json"
    rows.write_text(json.dumps([{"set": "Set5", **row} for row in scores(1.0, 30.0, 31.0)]))
    with pytest.raises(SystemExit) as exit_info:
        auto_fit(["--rows", str(rows)])
    assert exit_info.value.code == 2


def test_it_refuses_scores_saved_before_a_measure_existed(tmp_path: Path) -> None:
    rows = tmp_path / "old.json"
    old = scores(1.0, 30.0, 31.0)
    for row in old:
        row["measures"].pop("hard_edges", None)
    rows.write_text(json.dumps(old))
    with pytest.raises(SystemExit) as exit_info:
        auto_fit(["--rows", str(rows)])
    assert exit_info.value.code == 2


def test_saved_scores_take_no_models(tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(scores(1.0, 30.0, 31.0)))
    with pytest.raises(SystemExit) as exit_info:
        auto_fit(["--rows", str(rows), "--clean", "model.onnx"])
    assert exit_info.value.code == 2
