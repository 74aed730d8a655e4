"""The `python -m training` command line, end to end on tiny inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def _tiny_train_args(data: Path, run: Path) -> list[str]:
    """`train` flags for a two-step run of a 4-filter, 1-block model."""
    flags = {
        "--data": data,
        "--out": run,
        "--steps": 2,
        "--eval-every": 1,
        "--batch-size": 2,
        "--patch-size": 32,
        "--filters": 4,
        "--blocks": 1,
        "--val-holdout": 1,
        "--verbose": 0,
    }
    return ["train", *(str(part) for pair in flags.items() for part in pair)]


def test_train_export_evaluate_from_the_command_line(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_tiny_train_args(image_folder, run)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run / "best.keras"), "--out", str(onnx_path)]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] in ("1", "2")

    assert main(["evaluate", str(onnx_path), "--data", str(image_folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sets"][0]["images"] == 6

    # Fine-tuning starts from the exported model's weights.
    tuned = tmp_path / "tuned"
    assert main([*_tiny_train_args(image_folder, tuned), "--init-from", str(onnx_path)]) == 0
    assert json.loads((tuned / "config.json").read_text())["init_from"] == str(onnx_path)


def test_resume_needs_only_the_run_folder_and_the_new_step_total(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_tiny_train_args(image_folder, run)) == 0
    capsys.readouterr()

    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--verbose", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    assert json.loads((run / "config.json").read_text())["data"] == [str(image_folder)]


def test_resume_without_steps_keeps_the_runs_length(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_tiny_train_args(image_folder, run)) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--verbose", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    assert json.loads((run / "config.json").read_text())["steps"] == 2


def test_several_validation_files_after_one_flag(image_folder, tmp_path):
    run = tmp_path / "run"
    files = [str(image_folder / "a.png"), str(image_folder / "c.bmp")]
    assert main([*_tiny_train_args(image_folder, run), "--val-data", *files]) == 0
    assert json.loads((run / "config.json").read_text())["val_data"] == files


def test_inconsistent_flags_are_a_message_and_leave_no_run_folder(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*_tiny_train_args(image_folder, run), "--patch-size", "30"]) == 2
    assert "train failed: --patch-size 30 must be a multiple of --scale" in capsys.readouterr().err
    assert not run.exists()


def test_export_of_a_missing_checkpoint_is_a_message(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.keras"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_a_new_run_without_data_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "--data is required" in capsys.readouterr().err


@pytest.mark.slow
def test_training_runs_on_the_jax_backend(image_folder, tmp_path):
    pytest.importorskip("jax")
    run = tmp_path / "jax-run"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    subprocess.run(
        [sys.executable, "-m", "training", *_tiny_train_args(image_folder, run)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    config = json.loads((run / "config.json").read_text())
    state = json.loads((run / "state.json").read_text())
    assert config["backend"] == "jax"
    assert state["step"] == 2
    assert (run / "best.keras").is_file()


@pytest.fixture
def tiny_keras_model(tmp_path) -> Path:
    from training.model import build_edsr

    path = tmp_path / "tiny.keras"
    build_edsr(scale=4, filters=4, blocks=1).save(path)
    return path


def test_evaluate_finds_a_model_written_after_the_data_folders(
    image_folder, tiny_keras_model, capsys
):
    # argparse would file the model as one more --data folder; the command takes it back.
    assert main(["evaluate", "--data", str(image_folder), str(tiny_keras_model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sets"][0]["images"] == 6


def test_evaluate_without_a_model_is_a_usage_error(image_folder, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--data", str(image_folder)])
    assert exit_.value.code == 2
    assert "give the model to score" in capsys.readouterr().err
