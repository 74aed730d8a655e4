"""The training configuration and the `train` flags generated from it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from training.__main__ import _parser
from training.config import TrainConfig, to_flags


def _parse(flags: list[str]) -> TrainConfig:
    given = vars(_parser().parse_args(["train", *flags]))
    del given["command"], given["resume"]
    return TrainConfig(**given)


def test_a_config_written_as_flags_parses_back_to_itself():
    config = TrainConfig(
        data=["a", "b"],
        out="run",
        val_data=["v.png"],
        steps=20,
        lr=3e-4,
        lr_boundaries=[],
        lr_values=[1e-4],
        scale=2,
        mixed_precision="bfloat16",
        degradation="realistic",
        init_from="models/edsr_x4.onnx",
        loss="mse",
    )
    assert _parse(to_flags(config)) == config


def test_flags_not_given_keep_the_dataclass_defaults():
    assert _parse(["--data", "a", "--out", "o"]) == TrainConfig(data=["a"], out="o")


def test_every_field_but_the_recorded_ones_is_a_flag(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        assert (flag in help_text) == (item.name not in ("backend", "train_images", "val_images"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"mixed_precision": "fp8"}, "unknown --mixed-precision 'fp8'"),
        ({"degradation": "jpeg"}, "unknown --degradation 'jpeg'"),
        ({"lr_schedule": "step"}, "unknown --lr-schedule 'step'"),
        ({"loss": "l2"}, "unknown --loss 'l2'"),
        ({"patch_size": 30}, "multiple of --scale"),
        ({"lr_values": [1.0]}, "one more value"),
    ],
)
def test_settings_that_cannot_work_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=["a"], out="o", **setting).validate()


def test_a_config_saved_before_the_loss_knob_reads_back_as_l1(tmp_path):
    TrainConfig(data=["a"], out=str(tmp_path), loss="mse").save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["loss"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert TrainConfig.load(tmp_path).loss == "l1"


def test_a_run_folders_config_reads_back_ignoring_unknown_keys(tmp_path):
    config = TrainConfig(data=["a"], out=str(tmp_path), backend="jax", val_images=["x.png"])
    config.save(tmp_path)
    (tmp_path / "config.json").write_text(
        (tmp_path / "config.json").read_text().replace('"seed"', '"retired": 1, "seed"')
    )
    assert TrainConfig.load(tmp_path) == config
