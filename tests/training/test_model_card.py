"""The model-card script on a tiny model and a synthetic benchmark set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluate import evaluate_folder, load_upscaler
from training.export import export_onnx
from training.model_card import main as model_card
from training.train import train

SHARED_SET5 = Path(__file__).resolve().parents[3] / "shared" / "data" / "bench" / "Set5"


def test_model_card_writes_tables_curve_and_picture(tiny_config, image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, val_holdout=1, steps=2, eval_every=1, filters=4))
    model = tmp_path / "m.onnx"
    export_onnx(run / "best.keras", model)
    out = tmp_path / "card.json"
    assert (
        model_card(
            [
                "--model",
                str(model),
                "--run",
                str(run),
                "--bench",
                str(image_folder),
                "--out",
                str(out),
                "--curve",
                str(tmp_path / "curve.png"),
                "--picture",
                str(tmp_path / "pic.png"),
                "--picture-box",
                "0",
                "0",
                "32",
            ]
        )
        == 0
    )
    card = json.loads(out.read_text())
    results = card["evaluation"]["results"]
    assert set(results) == {"pil", "cv2"}
    assert set(results["pil"]) == {"bicubic", "EDSR x4 (this model)"}
    assert card["training"]["state"]["step"] == 2
    assert card["filters"] == "4"  # The export's metadata is carried over.
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert (tmp_path / "pic.png").stat().st_size > 0
    assert "| EDSR x4 (this model) |" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED_SET5.is_dir(), reason="../shared/data is not beside this clone")
def test_bicubic_anchor_on_set5_matches_the_published_protocol(tmp_path):
    from training.model import build_edsr

    build_edsr(filters=4, blocks=1).save(tmp_path / "t.keras")
    row = evaluate_folder(load_upscaler(tmp_path / "t.keras"), SHARED_SET5, scale=4)
    assert row["bicubic_psnr"] == pytest.approx(28.43, abs=0.01)
