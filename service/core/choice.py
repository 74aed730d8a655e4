"""Which model runs a request: the one it names, or with `auto` the one its input calls for.

When the service has a model trained on clean downscales (card degradation `bicubic`) and one
trained on real-world degradations (any other preset, e.g. `realistic`), `auto` decodes the
upload once, measures what it shows of its history (`service.imaging.evidence`: JPEG or WebP
quality, noise, aliasing, blur, a drawing's hard edges and flat colour, or a high-quality JPEG
or WebP without the noise every photograph has), and runs the robust model on anything degraded
or drawn, the clean model on a clean photograph. It is the default of requests that name no
model whenever both kinds are served.

The thresholds were chosen on training images (never the benchmark sets) so that a degraded
input rarely reaches the clean model, which loses up to 4 dB there, while a clean input may
reach the robust model at a cost of a few tenths of a dB; the measurement per category, the
confusion table and the cost are in the model card (models/README.md, *Choosing the model*).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from service.core.pipeline import Pipeline, Quality, UpscaleResult
from service.core.registry import DEFAULT_DEGRADATION, ModelRegistry, ServedModel
from service.core.tiling import TileProgress
from service.imaging.encode import OutputFormat
from service.imaging.evidence import Evidence

#: The `model` value that chooses from the input.
AUTO = "auto"


@dataclass(frozen=True)
class Thresholds:
    """Where a measure of the evidence starts to count as a degradation. Noise, aliasing and
    sharpness are fitted on training images against the shipped pair of models (`python -m
    training.research.auto_fit`; last refitted in the tenth session, with the ninth session's
    pair), the WebP quality likewise (`python -m training.research.webp`); the JPEG quality is
    set by what encoders use, the hard edges, the flat share and the noiseless level between
    what photographs and drawings measure.

    Attributes:
        webp_quality: A lossy WebP of this quality or lower is degraded: above it the clean
            model scores better on photographs (WebP's loop filter smooths its artefacts more
            than JPEG does), below it the robust one (`python -m training.research.webp`).
        jpeg_quality: A JPEG of this quality or lower is degraded (phones save at 85-95, the web
            at 75-85).
        noise: Estimated noise (0-255 scale) at or above which the input counts as noisy.
        aliasing: Aliasing score at or above which the input was resized without antialiasing.
        sharpness: Edge sharpness at or below which the input counts as blurred (the robust
            model saw blur).
        hard_edges: Share of hard edges at or above which the input is a drawing rendered
            without antialiasing (a screenshot, a diagram), on which the clean model scores
            2.0 dB under bicubic and the robust one 0.8 above. Set by hand between what
            antialiased drawings (0.12 at most) and downscaled photographs (0.043) measure and
            what the drawings that the aliasing score misses do (0.24 or more); no downscaled
            photograph's choice depends on it (models/README.md, *Drawings*).
        flat: Share of equal neighbours at or above which the input is a drawing (a chart, a
            slide, a screenshot), antialiased or not, which the robust model was trained on
            beside the photographs. Set by hand between photographs saved losslessly (0.50 at
            most) and drawings (0.78 or more); models/README.md, *Drawings*.
        noiseless: Noise at or below which a JPEG or lossy WebP of higher quality than its
            threshold is a drawing: the codec's rounding breaks the equal neighbours that
            `flat` counts, but the flattest fifth of a drawing stays flat (0.06 at most for
            JPEG at quality 91-98), where a photograph saved so keeps its grain: 22 of 2,994
            went to the robust model by this rule alone, and it scored 0.09 dB better than the
            clean model on them on average (0.87 worse at most). Set by hand with room for
            busier drawings; models/README.md, *Drawings*.
    """

    jpeg_quality: int = 90
    webp_quality: int = 80
    noise: float = 3.0
    aliasing: float = 0.74
    sharpness: float = 0.65
    hard_edges: float = 0.2
    flat: float = 0.65
    noiseless: float = 0.2


#: The thresholds the service decides with.
THRESHOLDS = Thresholds()


def degradations(evidence: Evidence, thresholds: Thresholds = THRESHOLDS) -> tuple[str, ...]:
    """What the evidence says the input went through: `jpeg`, `webp`, `noise`, `aliasing`,
    `blur`, or what it is: `hard-edges` (drawn without antialiasing), `flat` (a drawing),
    `noiseless` (a drawing saved as a high-quality JPEG or WebP); () for a clean photograph."""
    found = []
    jpeg, webp = evidence.jpeg_quality, evidence.webp_quality
    if jpeg is not None and jpeg <= thresholds.jpeg_quality:
        found.append("jpeg")
    if webp is not None and webp <= thresholds.webp_quality:
        found.append("webp")
    if evidence.noise is not None and evidence.noise >= thresholds.noise:
        found.append("noise")
    if evidence.aliasing is not None and evidence.aliasing >= thresholds.aliasing:
        found.append("aliasing")
    if evidence.sharpness is not None and evidence.sharpness <= thresholds.sharpness:
        found.append("blur")
    if evidence.hard_edges is not None and evidence.hard_edges >= thresholds.hard_edges:
        found.append("hard-edges")
    if evidence.flat is not None and evidence.flat >= thresholds.flat:
        found.append("flat")
    # Above its threshold a lossy file passes for clean, unless nothing in it has any noise.
    high_quality = (jpeg or 0) > thresholds.jpeg_quality or (webp or 0) > thresholds.webp_quality
    if high_quality and evidence.noise is not None and evidence.noise <= thresholds.noiseless:
        found.append("noiseless")
    return tuple(found)


@dataclass(frozen=True)
class Choice:
    """The model that ran, and with `auto` the evidence and what it found.

    Attributes:
        model: The model that ran.
        evidence: What the input showed (None when the request named its model).
        found: The degradations found (empty: clean input, or no `auto`).
        seconds: Time spent measuring the evidence.
    """

    model: ServedModel
    evidence: Evidence | None = None
    found: tuple[str, ...] = ()
    seconds: float = 0.0

    def describe(self) -> str | None:
        """`jpeg-quality=72; webp-quality=none; noise=3.1; sharpness=0.70; aliasing=0.71;
        hard-edges=0.00; flat=0.02; found=jpeg` (`found=none` for clean input), for the
        `X-Upscaler-Evidence` header; None without `auto`."""
        if self.evidence is None:
            return None
        return f"{self.evidence.describe()}; found={','.join(self.found) or 'none'}"


class Selection(Protocol):
    """What a request asked to run: one model (`Fixed`) or the choice from the input (`Auto`)."""

    @property
    def pipeline(self) -> Pipeline:
        """A pipeline for the checks made before the upload queues (scale, limits, format)."""
        ...

    def estimate_seconds(self, width: int, height: int, quality: Quality) -> float:
        """Estimated model time of the upscale (`ServedModel.estimate_seconds`), for admission."""
        ...

    def run(
        self,
        data: bytes,
        output_format: OutputFormat,
        quality: Quality,
        cancel: threading.Event | None = None,
        progress: TileProgress | None = None,
        *,
        keep_metadata: bool = False,
    ) -> tuple[Choice, UpscaleResult]:
        """Upscales the upload (blocking; a worker thread) and says which model ran; its EXIF
        and XMP go into the output with `keep_metadata`."""
        ...


@dataclass(frozen=True)
class Fixed:
    """The model the request named (or the default)."""

    model: ServedModel

    @property
    def pipeline(self) -> Pipeline:
        return self.model.pipeline

    def estimate_seconds(self, width: int, height: int, quality: Quality) -> float:
        return self.model.estimate_seconds(width, height, quality)

    def run(
        self,
        data: bytes,
        output_format: OutputFormat,
        quality: Quality,
        cancel: threading.Event | None = None,
        progress: TileProgress | None = None,
        *,
        keep_metadata: bool = False,
    ) -> tuple[Choice, UpscaleResult]:
        run = self.model.pipeline
        result = run(data, output_format, quality, cancel, progress, keep_metadata=keep_metadata)
        return Choice(self.model), result


@dataclass(frozen=True)
class Auto:
    """The clean model for clean input, the robust one for anything degraded."""

    clean: ServedModel
    robust: ServedModel

    @classmethod
    def of(cls, registry: ModelRegistry) -> Auto | None:
        """The pair to choose from, when the registry serves both kinds at one scale: the clean
        model is the default when it was trained on clean downscales (else the first such by
        name), the robust one the first by name trained on another degradation."""
        models = list(registry)
        clean = [m for m in models if m.card.degradation == DEFAULT_DEGRADATION]
        robust = [m for m in models if m.card.degradation != DEFAULT_DEGRADATION]
        if not clean or not robust:
            return None
        first_clean = registry.default if registry.default in clean else clean[0]
        if first_clean.engine.info.scale != robust[0].engine.info.scale:
            return None
        return cls(first_clean, robust[0])

    @property
    def pipeline(self) -> Pipeline:
        return self.clean.pipeline

    def estimate_seconds(self, width: int, height: int, quality: Quality) -> float:
        # Which model runs is known only once the image is decoded: the slower one's estimate.
        models = (self.clean, self.robust)
        return max(model.estimate_seconds(width, height, quality) for model in models)

    def choose(self, evidence: Evidence) -> tuple[ServedModel, tuple[str, ...]]:
        """The model for input showing `evidence`, and the degradations found."""
        found = degradations(evidence)
        return (self.robust if found else self.clean), found

    def run(
        self,
        data: bytes,
        output_format: OutputFormat,
        quality: Quality,
        cancel: threading.Event | None = None,
        progress: TileProgress | None = None,
        *,
        keep_metadata: bool = False,
    ) -> tuple[Choice, UpscaleResult]:
        started = time.perf_counter()
        decoded = self.clean.pipeline.decode_request(data, keep_metadata=keep_metadata)
        decoded_at = time.perf_counter()
        evidence = Evidence.of(decoded)
        model, found = self.choose(evidence)
        choice = Choice(model, evidence, found, time.perf_counter() - decoded_at)
        result = model.pipeline.upscale_decoded(
            decoded, output_format, quality, cancel, progress, decode_seconds=decoded_at - started
        )
        return choice, result


def select(registry: ModelRegistry, name: str | None) -> Selection:
    """What a request's `model` value asks for: a model by name; `auto` (the choice from the
    input when both kinds are served, else the default); nothing: `auto` when both kinds are
    served, else the default.

    Raises:
        UnknownModelError: For a name no loaded model has.
    """
    if not name or name == AUTO:
        auto = Auto.of(registry)
        return auto if auto is not None else Fixed(registry.default)
    return Fixed(registry.get(name))
