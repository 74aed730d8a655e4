"""The model-card script on a tiny model and a synthetic benchmark set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluate import evaluate_folder, load_upscaler
from training.export import export_onnx
from training.research.model_card import chain_histories
from training.research.model_card import main as model_card
from training.train import train

SHARED_SET5 = Path(__file__).resolve().parents[4] / "shared" / "data" / "bench" / "Set5"


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


def _fake_run(folder: Path, steps: list[int], best_step: int) -> Path:
    folder.mkdir()
    rows = ["epoch,loss,step,val_psnr"]
    rows += [f"{i},{10 - i},{step},{20 + i}" for i, step in enumerate(steps)]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")
    (folder / "state.json").write_text(json.dumps({"step": steps[-1], "best_step": best_step}))
    return folder


def test_a_fine_tuning_stage_continues_from_the_previous_stages_best_step(tmp_path):
    first = _fake_run(tmp_path / "a", [100, 200, 300], best_step=200)
    second = _fake_run(tmp_path / "b", [100, 200], best_step=200)

    rows, boundaries = chain_histories([first, second])

    # Step 300 of the first stage never reached the shipped weights, so it is dropped.
    assert [row["step"] for row in rows] == [100, 200, 300, 400]
    assert [row["loss"] for row in rows] == [10, 9, 10, 9]
    assert boundaries == [200]


def test_model_card_keeps_the_previous_models_figures_and_scores_the_self_ensemble(
    tiny_config, image_folder, tmp_path, capsys
):
    first, second = tmp_path / "first", tmp_path / "second"
    train(tiny_config(first, val_holdout=1, steps=2, eval_every=1, filters=4))
    train(
        tiny_config(
            second,
            val_holdout=1,
            steps=2,
            eval_every=1,
            filters=4,
            init_from=str(first / "best.keras"),
        )
    )
    model = tmp_path / "m.onnx"
    export_onnx(second / "best.keras", model)
    previous = tmp_path / "previous.json"
    previous.write_text(
        json.dumps(
            {
                "steps": "7",
                "evaluation": {
                    "results": {
                        "pil": {
                            "bicubic": {},
                            "EDSR x4 (this model)": {"photos": {"psnr": 1.0, "ssim": 0.5}},
                        },
                        "cv2": {"EDSR x4 (this model)": {"photos": {"psnr": 2.0, "ssim": 0.25}}},
                    }
                },
            }
        )
    )
    out = tmp_path / "card.json"
    args = ["--model", str(model), "--run", str(first), "--run", str(second)]
    args += ["--bench", str(image_folder), "--out", str(out), "--self-ensemble"]
    args += ["--previous", str(previous), "--curve", str(tmp_path / "curve.png")]
    assert model_card(args) == 0

    card = json.loads(out.read_text())
    results = card["evaluation"]["results"]
    assert "EDSR x4 (this model), self-ensemble" in results["pil"]
    assert "EDSR x4 (this model), self-ensemble" not in results["cv2"]
    assert [stage["state"]["step"] for stage in card["training"]["stages"]] == [2, 2]
    assert card["previous_model"]["metadata"]["steps"] == "7"
    printed = capsys.readouterr().out
    assert "| EDSR x4 (previous model) | 1.00 / 0.5000 |" in printed
    assert "| EDSR x4 (previous model) | 2.00 / 0.2500 |" in printed
    assert (tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.skipif(not SHARED_SET5.is_dir(), reason="../shared/data is not beside this clone")
def test_bicubic_anchor_on_set5_matches_the_published_protocol(tmp_path):
    from training.model import build_edsr

    build_edsr(filters=4, blocks=1).save(tmp_path / "t.keras")
    row = evaluate_folder(load_upscaler(tmp_path / "t.keras"), SHARED_SET5, scale=4)
    assert row["bicubic_psnr"] == pytest.approx(28.43, abs=0.01)


def test_with_degradations_each_category_is_a_kind_of_the_card(image_folder, tmp_path, capsys):
    from tests.service.helpers import build_model

    model = build_model(tmp_path / "robust.onnx")
    out = tmp_path / "card.json"
    argv = ["--model", str(model), "--bench", str(image_folder), "--out", str(out)]
    assert model_card([*argv, "--degradations", "--description", "For real uploads."]) == 0
    card = json.loads(out.read_text())
    assert card["description"] == "For real uploads."
    evaluation = card["evaluation"]
    for category in ("clean", "jpeg-30", "camera"):
        rows = evaluation["results"][category]
        assert set(rows) == {"bicubic", "EDSR x4 (this model)"}
        assert rows["EDSR x4 (this model)"][image_folder.name]["psnr"] > 0
        assert evaluation["lr_kinds"][category]
    assert "### By degradation category" in capsys.readouterr().out
