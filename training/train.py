"""The training loop: plain `fit()` with L1 (or MSE) loss, Adam, batch PSNR, best-on-validation
checkpointing, early stopping and resumable run folders.

A run folder holds:
  config.json   the full TrainConfig (what the run was asked to do and what it used)
  state.json    where the run stands: epochs and steps done, best validation PSNR, patience used
  last.keras    the latest model *and optimizer state*, for `--resume`
  best.keras    the model that scored best on validation, for evaluation and export
  average.keras with --average-from: the mean of the weights at each validation since that step
  history.csv   one row per evaluation (loss, PSNR, validation loss and PSNR, learning rate)
  logs/         TensorBoard event files (when TensorFlow is installed)
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from service.host import atomic_path, atomic_write_text
from training import data
from training.config import LOSSES, TrainConfig
from training.degradations import DEGRADATIONS
from training.metrics import psnr_metric
from training.model import EDSR, build_in, describe_edsr, dtype_policy_scope, load_edsr

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
AVERAGE_CHECKPOINT = "average.keras"
HISTORY_FILE = "history.csv"


@dataclass
class RunState:
    """Progress of a run, rewritten after every evaluation."""

    epoch: int = 0
    step: int = 0
    best_val_psnr: float | None = None
    best_step: int = 0
    wait: int = 0
    stopped_early: bool = False
    # Wall-clock seconds spent in fit(), summed over every resume (validation included).
    train_seconds: float = 0.0
    # Batches per epoch when `epoch` was counted: a resume that makes the run longer can change
    # it (a run shorter than --eval-every has one short epoch), and then `epoch` is converted.
    # 0 in run folders written before this field existed.
    steps_per_epoch: int = 0
    # How many validations' weights average.keras holds (--average-from).
    averaged: int = 0

    def save(self, run_dir: Path) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        atomic_write_text(run_dir / STATE_FILE, text)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        return cls(**json.loads((run_dir / STATE_FILE).read_text()))


class RunCheckpoint(keras.callbacks.Callback):
    """Keeps the run folder current after each evaluation: best and latest checkpoints, the
    early-stopping count and the step counter, all in one place so a resume restores them together
    (Keras' own ModelCheckpoint and EarlyStopping forget their state when `fit()` restarts)."""

    def __init__(self, run_dir: Path, state: RunState, patience: int, average_from: int = 0):
        super().__init__()
        self.run_dir, self.state, self.patience = run_dir, state, patience
        self.average_from = average_from
        self._average: EDSR | None = None  # float32, whatever the run's precision
        self._epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        state.train_seconds += time.monotonic() - self._epoch_started
        state.epoch, state.step = epoch + 1, logs["step"]  # counted by StepLogger
        val_psnr = logs.get("val_psnr")
        if val_psnr is not None and (state.best_val_psnr is None or val_psnr > state.best_val_psnr):
            state.best_val_psnr = float(val_psnr)
            state.best_step = state.step
            state.wait = 0
            with atomic_path(self.run_dir / BEST_CHECKPOINT) as tmp:
                self.model.save(tmp)
            log.info("step %d: validation PSNR %.3f dB, new best", state.step, val_psnr)
        else:
            state.wait += 1
        if self.average_from and state.step >= self.average_from:
            self._add_to_average()
        with atomic_path(self.run_dir / LAST_CHECKPOINT) as tmp:
            self.model.save(tmp)
        if self.patience and state.wait >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True
            log.info("early stop: no validation gain in %d evaluations", state.wait)
        state.save(self.run_dir)

    def _add_to_average(self) -> None:
        """Folds the current weights into average.keras (a running mean over validations)."""
        state, path = self.state, self.run_dir / AVERAGE_CHECKPOINT
        if self._average is None:
            if state.averaged:  # resumed: go on from the saved mean
                self._average = load_edsr(path)
            else:
                self._average = build_in("float32", describe_edsr(self.model))
        weights = self.model.get_weights()
        if state.averaged:
            count = state.averaged + 1
            mean = self._average.get_weights()
            weights = [old + (new - old) / count for old, new in zip(mean, weights, strict=True)]
        self._average.set_weights(weights)
        state.averaged += 1
        with atomic_path(path) as tmp:
            self._average.save(tmp)


class StepLogger(keras.callbacks.Callback):
    """Adds the step (batches trained) and the learning rate in force to each history row, so
    curves can be drawn against steps whatever `--eval-every` was.

    The step is counted from the epochs rather than read from `optimizer.iterations`, which
    under float16 loss scaling counts only the updates applied (a step whose gradients
    overflowed is skipped), so it would lag behind the batches trained.
    """

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs["step"] = (epoch + 1) * self.steps_per_epoch
        logs["learning_rate"] = float(self.model.optimizer.learning_rate)


def _drop_history_after(history: Path, step: int) -> None:
    """Removes history rows past `step`, the last state saved.

    The history row of an evaluation is written just before its checkpoint and state; a run
    killed in between resumes from the previous state and would otherwise log that evaluation
    twice.
    """
    if not history.is_file():
        return
    with history.open(newline="") as file:
        rows = list(csv.reader(file))
    if not rows or "step" not in rows[0]:
        return
    column = rows[0].index("step")
    kept = [rows[0]] + [row for row in rows[1:] if float(row[column]) <= step]
    if len(kept) == len(rows):
        return
    log.info("dropping %d history row(s) past step %d", len(rows) - len(kept), step)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)  # the excel dialect, as Keras' CSVLogger writes
    atomic_write_text(history, buffer.getvalue())


def learning_rate_schedule(config: TrainConfig):
    """The Adam learning-rate schedule the config names, driven by the optimizer's step count (so
    it continues exactly where a resumed run left off), or a constant rate without boundaries."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=config.steps)
    if not config.lr_boundaries:  # a constant rate (Keras's piecewise decay needs a boundary)
        return float(config.learning_rate_values()[0])
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        config.lr_boundaries, config.learning_rate_values()
    )


def build_and_compile(config: TrainConfig) -> keras.Model:
    """Builds the EDSR model the config describes, compiled with its loss, Adam and batch PSNR."""
    model = EDSR(config.scale, config.filters, config.blocks, config.res_scale)
    jit = {"auto": "auto", "on": True, "off": False}[config.jit_compile]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate_schedule(config)),
        loss=LOSSES[config.loss],
        metrics=[psnr_metric],
        jit_compile=jit,
    )
    return model


def _split_validation(config: TrainConfig, sources: list[data.ImageSource]):
    """Validation images: --val-data when given (removed from the training set if they are in it,
    so nothing leaks), else `val_holdout` images spread evenly over the sorted training list."""
    if config.val_data:
        val = data.discover_sources(config.val_data, config.scale)
        held = {s.hr_path.resolve() for s in val}
        train = [s for s in sources if s.hr_path.resolve() not in held]
        if len(train) < len(sources):
            log.info("excluded %d validation images from training", len(sources) - len(train))
        return train, val
    return data.hold_out(sources, config.val_holdout)


def _prepare_run_dir(config: TrainConfig, resume: bool) -> tuple[TrainConfig, RunState]:
    run_dir = Path(config.out)
    if resume:
        if not (run_dir / STATE_FILE).exists():
            raise FileNotFoundError(f"nothing to resume: {run_dir / STATE_FILE} does not exist")
        saved = TrainConfig.load(run_dir)
        state = RunState.load(run_dir)
        # Only the length of the run may change on resume; everything else is the run's own.
        if config.steps != saved.steps:
            log.info("changing the run length from %d to %d steps", saved.steps, config.steps)
        if state.stopped_early and config.steps > saved.steps:
            # Asking for more steps than an early-stopped run had is asking it to go on.
            log.info("extending an early-stopped run: the patience count starts again")
            state.stopped_early, state.wait = False, 0
        # The run lives where it was found: a copied or moved run folder must not write into
        # the folder its config.json was first written in.
        return dataclasses.replace(
            saved, steps=config.steps, verbose=config.verbose, out=config.out
        ), state
    if (run_dir / STATE_FILE).exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume or a new --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return config, RunState()


def _align_epochs(state: RunState, wanted: int) -> int:
    """Chooses the batches per epoch for this (possibly resumed) run and re-counts
    `state.epoch` in them.

    Normally that is `wanted` (one epoch per evaluation interval). A run first trained for
    fewer steps than --eval-every had one short epoch; extended, its batches so far need not be
    a whole number of intervals, so the interval becomes their greatest common divisor (it
    still divides the total, which is a multiple of `wanted`).

    Returns:
        The batches per epoch to train with.
    """
    if state.steps_per_epoch in (0, wanted):
        state.steps_per_epoch = wanted
        return wanted
    trained = state.epoch * state.steps_per_epoch
    steps_per_epoch = math.gcd(trained, wanted)
    if steps_per_epoch != wanted:
        log.info(
            "evaluating every %d steps instead of %d, to line up with the %d already trained",
            steps_per_epoch,
            wanted,
            trained,
        )
    state.epoch, state.steps_per_epoch = trained // steps_per_epoch, steps_per_epoch
    return steps_per_epoch


def train(config: TrainConfig, resume: bool = False) -> RunState:
    """Trains a run, or with `resume` continues the one in `config.out`, and returns its final
    state. A resume takes only `out` (where the run folder is now), `steps` (the new total; more
    steps than an early-stopped run had restart its patience count) and `verbose` from `config`;
    the rest comes from the run folder's config.json."""
    if not resume:
        config.validate()  # before the run folder is created, so a typo leaves nothing behind
    config, state = _prepare_run_dir(config, resume)
    config.validate()
    # The precision policy is global to Keras: set it for this run whatever an earlier run in
    # this process left behind.
    policy = "float32" if config.mixed_precision == "off" else f"mixed_{config.mixed_precision}"
    with dtype_policy_scope(policy):
        return _train(config, state, resume)


def _train(config: TrainConfig, state: RunState, resume: bool) -> RunState:
    run_dir = Path(config.out)
    keras.utils.set_random_seed(config.seed)
    train_pairs, val_pairs = _load_images(config)
    config.save(run_dir)
    steps_per_epoch = _align_epochs(state, min(config.eval_every, config.steps))
    epochs = config.steps // steps_per_epoch
    if state.epoch >= epochs or state.stopped_early:
        log.info("run already complete at step %d", state.step)
        return state
    model = build_and_compile(config)
    if resume:
        # Build the optimizer's slots first so the checkpoint's moments and step count load
        # into them; the schedule itself comes from the (possibly extended) config.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(run_dir / LAST_CHECKPOINT)
        log.info("resumed at step %d (epoch %d)", state.step, state.epoch)
        _drop_history_after(run_dir / HISTORY_FILE, state.step)
    elif config.init_from:
        # Fine-tuning: start from trained weights (any precision policy), with a fresh optimizer.
        model.set_weights(load_edsr(config.init_from).get_weights())
        log.info("initialised the weights from %s", config.init_from)
    train_stream = data.TrainingPatches(
        train_pairs,
        config.scale,
        config.patch_size,
        config.batch_size,
        steps_per_epoch,
        seed=config.seed,
        initial_epoch=state.epoch,
        degradation=None if config.degradation == "bicubic" else DEGRADATIONS[config.degradation],
        workers=config.workers,
    )
    model.fit(
        train_stream,
        epochs=epochs,
        initial_epoch=state.epoch,
        # TrainingPatches draws each epoch's batches from (seed, epoch, index) itself. Keras'
        # own shuffle would reorder them with Python's global RNG, which a resume reseeds, so a
        # resumed run would see the same batches in another order than an uninterrupted one.
        shuffle=False,
        validation_data=data.ValidationImages(val_pairs, config.scale, crop=config.val_crop),
        callbacks=_callbacks(run_dir, state, config, steps_per_epoch, resume),
        verbose=config.verbose,
    )
    best = state.best_val_psnr
    log.info(
        "finished at step %d; best validation PSNR %s at step %d",
        state.step,
        "n/a" if best is None or math.isnan(best) else f"{best:.3f} dB",
        state.best_step,
    )
    return state


def _load_images(config: TrainConfig) -> tuple[list, list]:
    """The training and validation image pairs; records what was used in `config`."""
    sources = data.discover_sources(config.data, config.scale)
    train_sources, val_sources = _split_validation(config, sources)
    train_pairs = data.load_pairs(train_sources, config.scale, min_hr_size=config.patch_size)
    val_pairs = data.load_pairs(val_sources, config.scale, min_hr_size=config.val_crop)
    config.backend = keras.backend.backend()
    config.train_images = len(train_pairs)
    config.val_images = [str(s.hr_path) for s in val_sources]
    log.info(
        "training on %d images, validating on %d, backend %s",
        len(train_pairs),
        len(val_pairs),
        config.backend,
    )
    return train_pairs, val_pairs


def _callbacks(
    run_dir: Path, state: RunState, config: TrainConfig, steps_per_epoch: int, resume: bool
):
    callbacks = [
        StepLogger(steps_per_epoch),
        keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILE), append=resume),
        RunCheckpoint(run_dir, state, config.patience, config.average_from),
    ]
    if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"):
        # TensorBoard's writer needs TensorFlow; on a JAX-only machine the CSV history remains.
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False))
    return callbacks
