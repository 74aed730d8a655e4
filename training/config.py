"""Training configuration: one dataclass, saved as JSON in every run folder so a run can be
reproduced, resumed and described (the export and the model card read it back)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from training.degradations import MIXTURES

CONFIG_FILE = "config.json"


@dataclass
class TrainConfig:
    """Every knob of a training run. Field names match the command-line flags."""

    data: list[str]
    out: str
    val_data: list[str] = field(default_factory=list)
    val_holdout: int = 10
    val_crop: int = 0
    steps: int = 10_000
    eval_every: int = 1000
    batch_size: int = 16
    patch_size: int = 96
    degradation: str = "bicubic"
    scale: int = 4
    filters: int = 64
    blocks: int = 16
    res_scale: float = 1.0
    lr: float = 1e-4
    lr_schedule: str = "piecewise"
    lr_boundaries: list[int] = field(default_factory=lambda: [5000])
    lr_values: list[float] | None = None
    patience: int = 10
    init_from: str = ""
    mixed_precision: str = "off"
    jit_compile: str = "auto"
    seed: int = 0
    workers: int = 2
    verbose: int = 1
    # Filled in by the trainer, not by the user: what was really used.
    backend: str = ""
    train_images: int = 0
    val_images: list[str] = field(default_factory=list)

    def learning_rate_values(self) -> list[float]:
        """The piecewise-constant values: as given, else `lr` halved at each boundary."""
        if self.lr_values is not None:
            return list(self.lr_values)
        return [self.lr * 0.5**i for i in range(len(self.lr_boundaries) + 1)]

    def validate(self) -> None:
        """Raises ValueError for settings that cannot work together."""
        if self.patch_size % self.scale:
            raise ValueError(f"--patch-size {self.patch_size} must be a multiple of --scale")
        if self.val_crop % self.scale:
            raise ValueError(f"--val-crop {self.val_crop} must be a multiple of --scale")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError("--steps and --eval-every must be positive")
        if self.steps % min(self.eval_every, self.steps):
            raise ValueError(
                f"--steps {self.steps} must be a multiple of --eval-every "
                f"{self.eval_every} (one validation per --eval-every steps)"
            )
        if self.degradation not in MIXTURES:
            raise ValueError(
                f"unknown --degradation {self.degradation!r}; expected one of {sorted(MIXTURES)}"
            )
        if self.lr_schedule not in ("piecewise", "cosine"):
            raise ValueError(f"unknown --lr-schedule {self.lr_schedule!r}")
        values = self.learning_rate_values()
        if self.lr_schedule == "piecewise" and len(values) != len(self.lr_boundaries) + 1:
            raise ValueError("--lr-values needs exactly one more value than --lr-boundaries")
        if self.mixed_precision not in ("off", "float16", "bfloat16"):
            raise ValueError(f"unknown --mixed-precision {self.mixed_precision!r}")

    def save(self, run_dir: Path) -> None:
        """Writes the config as JSON into the run folder."""
        (run_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> TrainConfig:
        """Reads the config a run folder was started with."""
        raw = json.loads((run_dir / CONFIG_FILE).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
