"""The training ablation: each variant's command line, and a tiny end-to-end ablation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import TrainConfig, to_flags
from training.research.ablation import BASE, VARIANTS, AblationPlan
from training.research.ablation import main as ablation


def _plan(tmp_path: Path, **overrides) -> AblationPlan:
    settings = dict(
        data=["train", "extra"],
        val_data=["train/held_out.png"],
        out=str(tmp_path / "ablation"),
        steps=400,
        eval_every=100,
    )
    return AblationPlan(TrainConfig(**{**BASE, **settings, **overrides}), extra_data=("extra",))


def _changes(config: TrainConfig, base: TrainConfig) -> dict:
    return {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if name != "out" and value != getattr(base, name)
    }


def test_every_variant_differs_from_base_in_one_thing_only(tmp_path):
    plan = _plan(tmp_path)
    base = plan.config("base")
    assert base.data == ["train", "extra"]
    assert (base.lr_schedule, base.mixed_precision, base.patch_size) == ("cosine", "off", 192)
    assert base.out == str(tmp_path / "ablation" / "base")

    changed = {variant: _changes(plan.config(variant), base) for variant in VARIANTS}
    assert changed == {
        "base": {},
        "data-no-extra": {"data": ["train"]},
        "piecewise": {"lr_schedule": "piecewise", "lr_boundaries": [200, 300]},
        "patch-large": {"patch_size": 256},
        "bf16": {"mixed_precision": "bfloat16"},
    }


def test_each_variant_trains_through_the_train_command_line(tmp_path):
    from training.__main__ import _parser

    plan = _plan(tmp_path)
    for variant in VARIANTS:
        flags = to_flags(plan.config(variant))
        parsed = vars(_parser().parse_args(["train", *flags]))
        del parsed["command"], parsed["resume"]
        assert TrainConfig(**parsed) == plan.config(variant), variant
    assert "--data=extra" not in to_flags(plan.config("data-no-extra"))


def test_an_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        _plan(tmp_path).config("everything")


def test_a_tiny_ablation_trains_scores_and_resumes(image_folder, tmp_path, capsys):
    out = tmp_path / "ablation"
    args = ["--data", str(image_folder), "--bench", str(image_folder), "--out", str(out)]
    args += ["--steps", "2", "--eval-every", "1", "--batch-size", "2", "--patch-size", "32"]
    args += ["--large-patch-size", "48", "--filters", "4", "--blocks", "1"]
    args += ["--variants", "base", "bf16"]
    assert ablation(args) == 0

    results = json.loads((out / "ablation.json").read_text())
    assert list(results) == ["base", "bf16"]
    for variant in ("base", "bf16"):
        assert results[variant]["state"]["step"] == 2
        assert results[variant]["bench"]["photos"]["psnr"] > 0
    config = json.loads((out / "bf16" / "config.json").read_text())
    assert config["mixed_precision"] == "bfloat16"
    table = capsys.readouterr().out
    assert "| base |" in table and "| bf16 |" in table

    # A second call finds both runs finished: nothing trains again, the table is rebuilt.
    mtime = (out / "base" / "best.keras").stat().st_mtime
    assert ablation(args) == 0
    assert (out / "base" / "best.keras").stat().st_mtime == mtime


def test_a_run_started_with_other_settings_stops_the_ablation(image_folder, tmp_path, capsys):
    out = tmp_path / "ablation"
    args = ["--data", str(image_folder), "--out", str(out), "--steps", "1", "--eval-every", "1"]
    args += ["--batch-size", "2", "--patch-size", "32", "--filters", "4", "--blocks", "1"]
    assert ablation([*args, "--variants", "base", "--lr", "2e-4"]) == 0
    capsys.readouterr()
    # A rerun with another rate must not resume (or score) the old run as if it were this one.
    assert ablation([*args, "--variants", "base", "bf16", "--lr", "1e-3"]) == 2
    message = capsys.readouterr().err
    assert "was trained with other settings (lr: run has 0.0002, this ablation 0.001)" in message
    assert not (out / "bf16").exists()


def test_runs_trained_elsewhere_are_compared_by_data_names(tmp_path):
    from training.research.ablation import check_existing_run

    here = _plan(tmp_path, data=["/data/here/train", "extra"], val_data=["/data/here/train/a.png"])
    run = here.out / "bf16"
    run.mkdir(parents=True)
    settings = {**dataclasses.asdict(here.config("bf16")), "data": ["/tmp/gpu/train", "/tmp/extra"]}
    settings["val_data"] = ["/tmp/gpu/train/a.png"]
    (run / "config.json").write_text(json.dumps(settings))
    check_existing_run(here, "bf16")  # same names, other machine: accepted
    settings["patch_size"] = 256
    (run / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="patch_size: run has 256, this ablation 192"):
        check_existing_run(here, "bf16")


def test_without_val_data_every_variant_validates_on_the_same_images(image_folder, tmp_path):
    out = tmp_path / "ablation"
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x.png").write_bytes((image_folder / "a.png").read_bytes())
    args = ["--data", str(image_folder), "--extra-data", str(extra), "--out", str(out)]
    args += ["--steps", "1", "--eval-every", "1", "--batch-size", "2", "--patch-size", "32"]
    args += ["--filters", "4", "--blocks", "1", "--variants", "base", "data-no-extra"]
    assert ablation(args) == 0
    held = [
        json.loads((out / v / "config.json").read_text())["val_images"]
        for v in ("base", "data-no-extra")
    ]
    assert held[0] == held[1] and held[0]


def test_the_table_shows_training_images_and_tolerates_missing_sets():
    from training.research.ablation import markdown_table

    results = {
        "base": {"train_images": 604, "state": {"best_step": 4}, "bench": {"Set5": {"psnr": 31.0}}},
        "patch-large": {"train_images": 569, "state": {"best_step": 4}, "bench": {}},
    }
    table = markdown_table(results, ["Set5"]).splitlines()
    assert table[0].startswith("| variant | training images |")
    assert table[3].startswith("| patch-large | 569 |") and table[3].endswith("| – |")


def test_variants_can_train_side_by_side(image_folder, tmp_path):
    out = tmp_path / "ablation"
    args = ["--data", str(image_folder), "--bench", str(image_folder), "--out", str(out)]
    args += ["--steps", "2", "--eval-every", "2", "--batch-size", "2", "--patch-size", "32"]
    args += ["--filters", "4", "--blocks", "1", "--variants", "base", "piecewise"]
    assert ablation([*args, "--parallel", "2"]) == 0

    results = json.loads((out / "ablation.json").read_text())
    for variant in ("base", "piecewise"):
        assert results[variant]["state"]["step"] == 2
        # Side-by-side runs keep their output apart, one log each.
        assert "training on" in (out / f"{variant}.log").read_text()


def test_a_failed_variant_fails_the_ablation_after_the_others_finish(tmp_path, monkeypatch):
    from training.research import ablation as module

    plan = _plan(tmp_path, out=tmp_path)
    commands = {
        "base": [sys.executable, "-c", "raise SystemExit(3)"],
        "bf16": [sys.executable, "-c", "open('bf16-ran', 'w').close()"],
    }
    monkeypatch.setattr(module, "train_command", lambda plan, variant: commands[variant])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(subprocess.CalledProcessError) as failure:
        module.train_variants(plan, ["base", "bf16"], parallel=2)
    assert failure.value.returncode == 3
    assert (tmp_path / "bf16-ran").exists()


def test_without_benchmarks_the_variants_only_train(image_folder, tmp_path, capsys):
    out = tmp_path / "ablation"
    args = ["--data", str(image_folder), "--out", str(out), "--steps", "1", "--eval-every", "1"]
    args += ["--batch-size", "2", "--patch-size", "32", "--filters", "4", "--blocks", "1"]
    assert ablation([*args, "--variants", "base"]) == 0

    printed = capsys.readouterr().out  # the training command line, then the states as JSON
    assert json.loads(printed[printed.index("\n{") + 1 :])["base"]["step"] == 1
    assert (out / "base" / "best.keras").exists()
    assert not (out / "ablation.json").exists()
