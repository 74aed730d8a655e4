"""Training configuration: one dataclass, saved as JSON in every run folder so a run can be
reproduced, resumed and described (the export and the model card read it back).

Each field is also a `train` flag (`--batch-size` for `batch_size`): `add_flags` builds them from
the fields' metadata and `to_flags` writes a config back as flags, so a knob is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from training.degradations import DEGRADATIONS

CONFIG_FILE = "config.json"
# `--loss` names and the Keras losses they stand for.
LOSSES = {"l1": "mean_absolute_error", "mse": "mean_squared_error"}


def knob(default, help: str = "", **flag):
    """A field with its flag's help and argparse settings (`choices`, `metavar`, `nargs`); a list
    default becomes a `default_factory` (which ruff's RUF009 cannot see, hence its waivers)."""
    metadata = {"help": help, **flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def derived(default):
    """A field the trainer fills in with what it really used; it has no flag."""
    return knob(default, flag=False)


@dataclass
class TrainConfig:
    """Every knob of a training run."""

    data: list[str] = knob(  # noqa: RUF009
        [],
        "training images: a folder (searched recursively; DIV2K layout recognised) or a file; "
        "several after one flag or the flag repeated (not needed with --resume)",
        metavar="DIR",
    )
    out: str = knob("", "run folder", metavar="RUN_DIR")
    val_data: list[str] = knob(  # noqa: RUF009
        [],
        "validation images: folders or files, several after one flag or the flag repeated; "
        "excluded from training",
        metavar="PATH",
    )
    val_holdout: int = knob(
        10, "without --val-data: hold out this many training images for validation"
    )
    val_crop: int = knob(0, "validate on centred HR crops of this size (0 = whole images)")
    steps: int = knob(10_000, "total training steps (with --resume: the new total)")
    eval_every: int = knob(1000, "steps between validations (and checkpoints)")
    batch_size: int = knob(16)
    patch_size: int = knob(96, "HR patch side")
    degradation: str = knob(
        "bicubic",
        "how each training patch's LR is made: the textbook antialiased bicubic, or a mixture "
        "(or a blend of mixtures) drawn afresh per patch (see training/degradations.py)",
        choices=sorted(DEGRADATIONS),
    )
    scale: int = knob(4, choices=(2, 3, 4))
    filters: int = knob(64)
    blocks: int = knob(16)
    res_scale: float = knob(1.0)
    lr: float = knob(1e-4, "initial learning rate")
    lr_schedule: str = knob("piecewise", choices=("piecewise", "cosine"))
    lr_boundaries: list[int] = knob(  # noqa: RUF009
        [5000],
        "piecewise schedule: steps at which the rate changes (the bare flag: a constant rate)",
        nargs="*",
    )
    lr_values: list[float] | None = knob(  # noqa: RUF009
        None,
        "piecewise schedule: the rates (one more than boundaries); default: --lr halved at "
        "each boundary",
        nargs="*",
    )
    loss: str = knob(
        "l1",
        "l1 (EDSR's choice) or mse (what PSNR measures, for a last stage from an l1-trained model)",
        choices=tuple(LOSSES),
    )
    patience: int = knob(10, "stop after this many validations without gain (0 = never)")
    average_from: int = knob(
        0,
        "from this step on, also keep average.keras: the mean of the weights at every "
        "validation (stochastic weight averaging; steadier than any one checkpoint at a "
        "constant rate); 0 = off",
        metavar="STEP",
    )
    init_from: str = knob(
        "",
        "start from the weights of this .keras checkpoint or fp32 .onnx export (e.g. "
        "models/edsr_x4.onnx) to fine-tune; the architecture flags must match it",
        metavar="MODEL",
    )
    mixed_precision: str = knob("off", choices=("off", "float16", "bfloat16"))
    jit_compile: str = knob("auto", choices=("auto", "on", "off"))
    seed: int = knob(0)
    workers: int = knob(2, "data-loading worker threads")
    verbose: int = knob(
        1, "Keras fit verbosity: 1 = progress bar, 2 = one line per evaluation", choices=(0, 1, 2)
    )
    backend: str = derived("")
    train_images: int = derived(0)
    val_images: list[str] = derived([])  # noqa: RUF009

    def learning_rate_values(self) -> list[float]:
        """The piecewise-constant values: as given, else `lr` halved at each boundary."""
        if self.lr_values is not None:
            return list(self.lr_values)
        return [self.lr * 0.5**i for i in range(len(self.lr_boundaries) + 1)]

    def validate(self) -> None:
        """Raises ValueError for settings that cannot work together."""
        for item in _flag_fields():
            value, choices = getattr(self, item.name), item.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"unknown {_flag(item)} {value!r}; expected one of {choices}")
        if self.patch_size % self.scale:
            raise ValueError(f"--patch-size {self.patch_size} must be a multiple of --scale")
        if self.val_crop % self.scale:
            raise ValueError(f"--val-crop {self.val_crop} must be a multiple of --scale")
        if self.average_from < 0:
            raise ValueError("--average-from must not be negative (0 = off)")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError("--steps and --eval-every must be positive")
        if self.steps % min(self.eval_every, self.steps):
            raise ValueError(
                f"--steps {self.steps} must be a multiple of --eval-every "
                f"{self.eval_every} (one validation per --eval-every steps)"
            )
        values = self.learning_rate_values()
        if self.lr_schedule == "piecewise" and len(values) != len(self.lr_boundaries) + 1:
            raise ValueError("--lr-values needs exactly one more value than --lr-boundaries")

    def save(self, run_dir: Path) -> None:
        """Writes the config as JSON into the run folder."""
        (run_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> TrainConfig:
        """Reads the config a run folder was started with (keys it does not know are ignored)."""
        raw = json.loads((run_dir / CONFIG_FILE).read_text())
        return cls(
            **{item.name: raw[item.name] for item in dataclasses.fields(cls) if item.name in raw}
        )


def _flag_fields() -> list[dataclasses.Field]:
    return [item for item in dataclasses.fields(TrainConfig) if item.metadata.get("flag", True)]


def _flag(item: dataclasses.Field) -> str:
    return "--" + item.name.replace("_", "-")


def _element_type(annotation: str) -> type:
    """`int` for "int" and for "list[int]": the annotations are strings (see the __future__
    import), and a list flag parses each value."""
    return {"int": int, "float": float}.get(annotation.removeprefix("list[").split("]")[0], str)


def add_flags(
    parser: argparse.ArgumentParser, required: tuple[str, ...] = (), defaults: dict | None = None
) -> None:
    """Adds a flag for every TrainConfig field, its help ending in the default (`defaults`
    overrides the dataclass's). A flag not given is absent from the parsed namespace, so the
    caller knows what was asked for; list fields take several values, or repeat."""
    shown = {**dataclasses.asdict(TrainConfig()), **(defaults or {})}
    for item in _flag_fields():
        settings = {key: value for key, value in item.metadata.items() if key != "help"}
        if str(item.type).startswith("list["):
            settings = {"action": "extend", "nargs": "+", **settings}
        default = shown[item.name]
        shown_default = "" if default in (None, "", []) else f" (default: {default})"
        parser.add_argument(
            _flag(item),
            type=_element_type(str(item.type)),
            default=argparse.SUPPRESS,
            required=item.name in required,
            help=(item.metadata["help"] + shown_default).strip(),
            **settings,
        )


def to_flags(config: TrainConfig) -> list[str]:
    """The `train` flags that rebuild `config`: one per field that differs from its default."""
    flags = []
    for item in _flag_fields():
        value = getattr(config, item.name)
        if value == getattr(TrainConfig(), item.name):
            continue
        if isinstance(value, list):
            # A list emptied of a non-empty default is the bare flag (its nargs is "*").
            flags += [f"{_flag(item)}={element}" for element in value] or [_flag(item)]
        else:
            flags.append(f"{_flag(item)}={value}")
    return flags
