"""The training ablation: each variant's command line, and a tiny end-to-end ablation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.ablation import VARIANTS, AblationPlan
from training.ablation import main as ablation


def _plan(tmp_path: Path, **overrides) -> AblationPlan:
    settings = dict(
        data=("train",),
        extra_data=("extra",),
        val_data=("train/held_out.png",),
        out=tmp_path / "ablation",
        steps=400,
        eval_every=100,
    )
    return AblationPlan(**{**settings, **overrides})


def _flag(args: list[str], name: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]


def test_every_variant_differs_from_base_in_one_thing_only(tmp_path):
    plan = _plan(tmp_path)
    base = plan.train_args("base")
    assert _flag(base, "data") == ["train", "extra"]
    assert _flag(base, "lr-schedule") == ["cosine"]
    assert _flag(base, "mixed-precision") == ["off"]
    assert _flag(base, "patch-size") == ["192"]

    changed = {
        variant: {arg for arg in plan.train_args(variant) if "--out=" not in arg} - set(base)
        for variant in VARIANTS
    }
    assert changed["base"] == set()
    assert changed["data-no-extra"] == set()  # it only drops --data=extra
    assert "--data=extra" not in plan.train_args("data-no-extra")
    assert changed["piecewise"] == {"--lr-schedule=piecewise", "--lr-boundaries", "200", "300"}
    assert changed["patch-large"] == {"--patch-size=256"}
    assert changed["bf16"] == {"--mixed-precision=bfloat16"}


def test_an_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        _plan(tmp_path).train_args("everything")


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
    from training import ablation as module

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
