"""The models the service serves: found at start-up, each loaded once with its own pipeline.

Which files are served (`model_files`):
- `UPSCALER_MODEL_PATH` set (or `python -m service --model FILE`): that one file, named by its
  stem and the default; the models folder is not looked at.
- otherwise: every `NAME.onnx` in `UPSCALER_MODELS_DIR`, named `NAME`, except a `NAME_fp16.onnx`
  beside `NAME.onnx`: that is the fp16 export the engine picks itself
  (`service.core.engines.ortconfig.fp16_path_for`), and except the models `UPSCALER_MODELS`
  leaves out when it names some (`selected_models`). `UPSCALER_DEFAULT_MODEL` names the default.

Each model's card, `NAME.json` beside it (written by `python -m training export` and the model
card script), gives what `GET /models` lists: a description, the degradation it was trained on
and a compact subset of its benchmark figures. Engines come from the app's engine factory, so the
registry does not know which inference library runs them; a request switches models by picking
another loaded engine, never by loading one.

Each served model carries its `version` (the first 12 hex digits of the ONNX file's SHA-256) and
the `signature` of its files ((size, mtime_ns) of `NAME.onnx`, its fp16 copy and its card), by
which `service.core.reload` notices a changed file. A registry is immutable: a reload builds a new
one (`with_model`, `without`) and swaps it into the service state in one assignment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from service.config import Settings
from service.core.engines import Engine
from service.core.engines.ortconfig import fp16_path_for
from service.core.pipeline import Pipeline, Quality
from service.exceptions import InvalidParameterError, ModelLoadError

logger = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]
#: (size, mtime_ns) of a model's ONNX file, its fp16 copy and its card; None for a missing one.
FileSignature = tuple[tuple[int, int] | None, ...]

#: Degradation of models whose card does not name one: every model trained before the
#: degradation presets existed saw only Pillow's antialiased bicubic x1/4 (preset `bicubic`).
DEFAULT_DEGRADATION = "bicubic"
#: Benchmark sets reported by `GET /models`, in this order, when the card has them.
BENCHMARK_SETS = ("Set5", "Set14", "BSD100")
#: How the model card names the model's own row in `evaluation.results` ("EDSR x4 (this model)").
_OWN_ROW_SUFFIX = "(this model)"


class UnknownModelError(InvalidParameterError):
    """A request named a model that is not loaded (422, before the upload is read)."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        choices = ", ".join(repr(known_name) for known_name in known)
        super().__init__(
            f"query parameter model={name!r} names no loaded model; use one of {choices} "
            "(GET /models describes them)"
        )


@dataclass(frozen=True)
class ModelCard:
    """What `GET /models` says about a model, read from its card JSON.

    Attributes:
        description: One line for people choosing a model.
        degradation: The training degradation preset (`bicubic`, `realistic`, ...).
        benchmarks: Y-PSNR (dB) per LR kind (`pil`, `cv2`, ...): its label, the model's figure
            and bicubic's on each benchmark set; empty when the card has no evaluation.
        card_path: The card read, or None when there is none.
    """

    description: str
    degradation: str
    benchmarks: Mapping[str, Any]
    card_path: Path | None = None

    @classmethod
    def for_model(cls, model_path: Path, metadata: Mapping[str, str]) -> ModelCard:
        """The card beside `model_path` (`NAME.json`), with the ONNX metadata as fallback.

        A missing card is allowed (the model is listed with what its metadata says); a card
        that is not a JSON object fails start-up, as it means a broken install.

        Raises:
            ModelLoadError: If the card exists but cannot be read or parsed.
        """
        card_path = model_path.with_suffix(".json")
        card: dict[str, Any] = {}
        if card_path.is_file():
            try:
                card = json.loads(card_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelLoadError(f"model card {card_path} cannot be read: {exc}") from exc
            if not isinstance(card, dict):
                raise ModelLoadError(f"model card {card_path} is not a JSON object")
        else:
            logger.warning(
                "model %s has no card %s; GET /models lists it bare", model_path, card_path
            )
        degradation = _degradation(card, metadata)
        return cls(
            description=_description(card, metadata, degradation),
            degradation=degradation,
            benchmarks=MappingProxyType(_benchmarks(card)),
            card_path=card_path if card else None,
        )


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _degradation(card: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    training = card.get("training")
    config = training.get("config") if isinstance(training, dict) else None
    for candidate in (
        card.get("degradation"),
        config.get("degradation") if isinstance(config, dict) else None,
        metadata.get("degradation"),
    ):
        if text := _text(candidate):
            return text
    return DEFAULT_DEGRADATION


def _description(card: Mapping[str, Any], metadata: Mapping[str, str], degradation: str) -> str:
    for candidate in (card.get("description"), metadata.get("description")):
        if text := _text(candidate):
            return text
    scale = card.get("scale") or metadata.get("scale")
    blocks, filters = card.get("blocks") or metadata.get("blocks"), card.get("filters")
    filters = filters or metadata.get("filters")
    shape = f" ({blocks} blocks x {filters} filters)" if blocks and filters else ""
    factor = f" x{scale}" if scale else ""
    return f"EDSR{factor}{shape}, trained on the {degradation!r} degradation"


def _psnr_by_set(row: Any) -> dict[str, float]:
    if not isinstance(row, dict):
        return {}
    figures = {}
    for name in BENCHMARK_SETS:
        entry = row.get(name)
        psnr = entry.get("psnr") if isinstance(entry, dict) else None
        if isinstance(psnr, int | float) and not isinstance(psnr, bool):
            figures[name] = round(float(psnr), 3)
    return figures


def _benchmarks(card: Mapping[str, Any]) -> dict[str, Any]:
    """`{kind: {"label", "psnr": {set: dB}, "bicubic_psnr": {set: dB}}}` from the card's
    `evaluation.results`, the model's own row (named `... (this model)`, not the ensemble)."""
    evaluation = card.get("evaluation")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("results"), dict):
        return {}
    labels = evaluation.get("lr_kinds") if isinstance(evaluation.get("lr_kinds"), dict) else {}
    benchmarks: dict[str, Any] = {}
    for kind, rows in evaluation["results"].items():
        if not isinstance(rows, dict):
            continue
        own = next((row for name, row in rows.items() if name.endswith(_OWN_ROW_SUFFIX)), None)
        psnr = _psnr_by_set(own)
        if not psnr:
            continue
        benchmarks[str(kind)] = {
            "label": _text(labels.get(kind)) or str(kind),
            "psnr": psnr,
            "bicubic_psnr": _psnr_by_set(rows.get("bicubic")),
        }
    return benchmarks


@dataclass(frozen=True)
class ServedModel:
    """One loaded model: its engine, the pipeline bound to it, and its card.

    Attributes:
        name: The name requests use (`?model=NAME`): the file stem.
        engine: The loaded engine (`engine.info` describes how it runs).
        pipeline: decode → this model → encode.
        card: What `GET /models` lists about it.
        version: First 12 hex digits of the ONNX file's SHA-256 (`X-Upscaler-Model-Version`).
        signature: Its files' sizes and modification times when it was loaded (`signature`).
    """

    name: str
    engine: Engine
    pipeline: Pipeline
    card: ModelCard
    version: str = ""
    signature: FileSignature = ()

    def warm_up(self) -> None:
        """Runs every tile shape this model will be handed once (the square tile, and with
        fixed tiles the strips thin images are cut into), so no request pays a first-run cost
        such as cuDNN's kernel search."""
        self.engine.warm_up()
        batch = self.engine.info.batch_size
        for rows, columns in self.pipeline.tile_shapes:
            if rows != columns:  # the square ran in engine.warm_up
                self.engine.run(np.zeros((batch, rows, columns, 3), np.float32))

    def estimate_seconds(self, width: int, height: int, quality: Quality) -> float:
        """Estimated model time of an upscale of a `width` x `height` image (0 before the
        warm-up measured this host's pace)."""
        runs = 8 if quality is Quality.MAX else 1
        return runs * (self.engine.info.model_seconds(width, height) or 0.0)

    def seconds_per_megapixel(self) -> float | None:
        """Estimated model seconds per megapixel of input, for a client to multiply by its
        image's megapixels: those of the largest accepted image, whose tiles' overlap makes
        them a little more than its pixels (None before the warm-up)."""
        side = math.isqrt(self.pipeline.max_input_pixels)
        seconds = self.engine.info.model_seconds(side, side)
        return None if seconds is None else round(seconds / (side * side / 1e6), 3)

    def summary(self) -> dict[str, Any]:
        """The model's entry in `GET /models`."""
        return {
            "name": self.name,
            "description": self.card.description,
            "degradation": self.card.degradation,
            "scale": self.engine.info.scale,
            "seconds_per_megapixel": self.seconds_per_megapixel(),
            "benchmarks": dict(self.card.benchmarks),
        }


@dataclass(frozen=True)
class ModelRegistry:
    """Every served model, by name, default first; built once at start-up.

    Attributes:
        models: The models by name, the default first and the others by name.
        default_name: The model used when a request names none.
    """

    models: Mapping[str, ServedModel]
    default_name: str

    @property
    def default(self) -> ServedModel:
        """The model used when a request names none."""
        return self.models[self.default_name]

    @property
    def names(self) -> tuple[str, ...]:
        """The names requests may use, default first."""
        return tuple(self.models)

    def get(self, name: str | None) -> ServedModel:
        """The model a request asked for; the default for None or an empty name.

        Raises:
            UnknownModelError: If no loaded model has that name.
        """
        if not name:
            return self.default
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(name, self.names) from None

    def with_model(self, model: ServedModel) -> ModelRegistry:
        """A registry with `model` added, or replacing the model of that name."""
        return self._build({**self.models, model.name: model})

    def without(self, name: str) -> ModelRegistry:
        """A registry without model `name` (never the default)."""
        if name == self.default_name:
            raise ValueError(f"the default model {name!r} cannot be dropped")
        return self._build({key: value for key, value in self.models.items() if key != name})

    def _build(self, models: Mapping[str, ServedModel]) -> ModelRegistry:
        ordered = [self.default_name, *sorted(name for name in models if name != self.default_name)]
        return ModelRegistry(
            models=MappingProxyType({name: models[name] for name in ordered}),
            default_name=self.default_name,
        )

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


def serves_single_file(settings: Settings) -> bool:
    """Whether `model_path` was set explicitly (environment, argument or `--model`)."""
    return "model_path" in settings.model_fields_set


def folder_models(folder: Path) -> dict[str, Path]:
    """The models of a folder by name: every `NAME.onnx` but the fp16 copies and hidden files.

    `NAME_fp16.onnx` beside `NAME.onnx` is that model's fp16 export, not a model of its own;
    hidden files (`.tmp-NAME.onnx`) are files being written. `NAME.onnx.tmp` is no model.

    Raises:
        OSError: If the folder cannot be listed.
    """
    found = [
        path
        for path in sorted(folder.glob("*.onnx"))
        if path.is_file() and not path.name.startswith(".")
    ]
    copies = {fp16_path_for(path) for path in found}
    return {path.stem: path for path in found if path not in copies}


def selected_models(files: Mapping[str, Path], settings: Settings) -> dict[str, Path]:
    """The models of a folder (`folder_models`) that `UPSCALER_MODELS` names; all of them when
    it names none."""
    if not settings.models:
        return dict(files)
    return {name: path for name, path in files.items() if name in settings.models}


def _check_selection(files: Mapping[str, Path], settings: Settings) -> None:
    """Refuses an `UPSCALER_MODELS` that names a model the folder lacks, or leaves out the
    default (the service cannot run without it)."""
    folder, held = settings.models_dir, ", ".join(sorted(files))
    missing = [name for name in settings.models if name not in files]
    if missing:
        raise ModelLoadError(
            f"UPSCALER_MODELS names {', '.join(map(repr, missing))}, not in {folder}; it holds "
            f"{held}"
        )
    if settings.models and settings.default_model not in settings.models:
        raise ModelLoadError(
            f"default model {settings.default_model!r} (UPSCALER_DEFAULT_MODEL) is not among "
            f"UPSCALER_MODELS ({', '.join(settings.models)}): add it, or name another default"
        )


def model_files(settings: Settings) -> tuple[dict[str, Path], str]:
    """The model files to serve by name, and the default's name (see the module docstring).

    Raises:
        ModelLoadError: If the folder is missing or holds no model, two files share a name, the
            default model is not among them, or `UPSCALER_MODELS` names a model the folder
            lacks or leaves the default out.
    """
    if serves_single_file(settings):
        path = settings.model_path
        return {path.stem: path}, path.stem
    folder = settings.models_dir
    if not folder.is_dir():
        raise ModelLoadError(
            f"models folder not found: {folder} (set UPSCALER_MODELS_DIR, or UPSCALER_MODEL_PATH "
            "for one model)"
        )
    files = folder_models(folder)
    if not files:
        raise ModelLoadError(f"no model (*.onnx, fp16 copies aside) in {folder}")
    _check_selection(files, settings)
    files = selected_models(files, settings)
    default = settings.default_model
    if default not in files:
        known = ", ".join(sorted(files))
        raise ModelLoadError(
            f"default model {default!r} (UPSCALER_DEFAULT_MODEL) is not in {folder}; "
            f"it holds {known}"
        )
    return files, default


def load_models(settings: Settings, engine_factory: EngineFactory) -> ModelRegistry:
    """Loads every model to serve, one after the other (not warmed up yet).

    Each engine is built by `engine_factory` from the settings with `model_path` set to its
    file, so every model runs with the same providers, precision and tiling settings.

    Raises:
        ModelLoadError: See `model_files`, or from a model that cannot be loaded or whose card
            is broken.
    """
    files, default = model_files(settings)
    ordered = [default, *sorted(name for name in files if name != default)]
    models: dict[str, ServedModel] = {}
    for name in ordered:
        models[name] = load_model(name, files[name], settings, engine_factory)
    return ModelRegistry(models=MappingProxyType(models), default_name=default)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def signature(path: Path) -> FileSignature:
    """(size, mtime_ns) of the model file, its fp16 copy and its card (None where missing)."""
    return (_stat(path), _stat(fp16_path_for(path)), _stat(path.with_suffix(".json")))


def content_version(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: the model's version.

    Raises:
        ModelLoadError: If the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ModelLoadError(f"model file {path} cannot be read: {exc}") from exc
    return digest.hexdigest()[:12]


def load_model(
    name: str, path: Path, settings: Settings, engine_factory: EngineFactory
) -> ServedModel:
    """Loads one model (not warmed up): its engine from `settings` with `model_path` = `path`,
    its pipeline, its card, and its version and file signature taken before loading.

    Raises:
        ModelLoadError: If the model cannot be loaded or its card is broken.
    """
    before = signature(path)
    version = content_version(path) if before[0] is not None else ""
    model_settings = settings.model_copy(update={"model_path": path})
    engine = engine_factory(model_settings)
    card = ModelCard.for_model(path, engine.info.metadata)
    logger.info("model %r loaded from %s (version %s)", name, path, version or "unknown")
    return ServedModel(
        name=name,
        engine=engine,
        pipeline=Pipeline.for_engine(engine, model_settings),
        card=card,
        version=version,
        signature=before,
    )


def with_card(model: ServedModel, path: Path, signature_now: FileSignature) -> ServedModel:
    """The same loaded model with its card read again (only the card or a timestamp changed).

    Raises:
        ModelLoadError: If the card is broken.
    """
    card = ModelCard.for_model(path, model.engine.info.metadata)
    return dataclasses.replace(model, card=card, signature=signature_now)
