"""The `auto` measurement script on two tiny models and a synthetic benchmark set."""

from __future__ import annotations

import json
from pathlib import Path

from tests.service.helpers import build_model
from training.degradations import CATEGORIES
from training.research.auto_choice import main as auto_choice


def test_it_scores_both_models_and_auto_per_category(image_folder: Path, tmp_path: Path, capsys):
    clean = build_model(tmp_path / "clean.onnx", seed=1)
    robust = build_model(tmp_path / "robust.onnx", seed=2)
    out, rows = tmp_path / "auto.json", tmp_path / "rows.json"
    argv = ["--clean", str(clean), "--robust", str(robust), "--data", str(image_folder)]
    assert auto_choice([*argv, "--out", str(out), "--per-image", str(rows)]) == 0
    results = json.loads(out.read_text())
    table = results["sets"][image_folder.name]
    images = len({row["image"] for row in json.loads(rows.read_text())})
    assert set(table) == set(CATEGORIES) and images > 0
    for row in table.values():
        assert row["chose_clean"] + row["chose_robust"] == images
        # auto runs one of the two on every image, so it never beats the better one's mean by
        # more than the per-image choice can, nor falls under the worse one.
        assert min(row["clean"], row["robust"]) - 1e-6 <= row["auto"]
    # JPEG files are found as such (the quality comes from the file, not the pixels).
    assert table["jpeg-30"]["chose_robust"] == images
    assert 0 < results["cost"]["share"] < 1
    assert "| jpeg-30 |" in capsys.readouterr().out
