"""Training and validation data: image discovery, decoding, the standard degradation and the
patch stream that feeds `fit()`.

Everything here is numpy and Pillow, so the pipeline is the same on every Keras backend. Images
are decoded once and kept in memory as uint8 (the 291-image set is ~110 MB; DIV2K's 800 training
images, ~2.8 megapixels each, ~7 GB); patches are cut from memory by `keras.utils.PyDataset`
worker threads.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import keras
import numpy as np
from PIL import Image, ImageOps

from training.degradations import Blend, Mixture, apply_mixture

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
LR_KINDS = ("pil", "cv2")
# LR pixels of context cut around a training patch before it is degraded: covers the widest
# kernel (blur σ 1.5 at 3σ, plus the ×4 antialiased bicubic's 8 HR pixels) at the patch's edge.
DEGRADATION_MARGIN = 4

_DIV2K_HR_DIR = re.compile(r"^(?P<prefix>DIV2K_(?:train|valid))_HR$")
# The benchmark sets as distributed with SelfExSR (Huang et al. 2015) and most SR code bases:
# Set5/image_SRF_4/img_001_SRF_4_HR.png beside img_001_SRF_4_LR.png, one folder per scale.
_SRF_FILE = re.compile(r"^(?P<name>.+)_SRF_(?P<scale>\d+)_(?P<kind>HR|LR)$")


class UnreadableImageError(ValueError):
    """An image file that Pillow cannot decode."""


@dataclass(frozen=True)
class ImagePair:
    """A high-resolution image and its low-resolution counterpart, both HxWx3 uint8.

    `hr` is already cropped to a multiple of the scale, so `hr.shape[:2] == lr.shape[:2] * scale`.
    """

    name: str
    hr: np.ndarray
    lr: np.ndarray


@dataclass(frozen=True)
class ImageSource:
    """Where one training or evaluation image comes from; `lr_path` is None when the
    low-resolution image is made on the fly by the standard degradation."""

    hr_path: Path
    lr_path: Path | None = None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB: palettes and grey expand, alpha is dropped,
    16-bit and 32-bit integer images are scaled (not clipped) to 8 bits."""
    if image.mode == "F":
        # Float samples have no agreed range (0-1, 0-255, HDR...): guessing would train on a
        # black or washed-out picture, so the image is refused (and skipped with a warning).
        raise UnreadableImageError("32-bit float images are not supported")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P":
        # Palettes with a transparent index must go through RGBA to keep their colours.
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> np.ndarray:
    """Decodes an image file to an HxWx3 uint8 RGB array, applying its EXIF orientation.

    Raises:
        UnreadableImageError: The file is missing, truncated or not an image; the message names it.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(_to_rgb(image), dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crops the bottom and right edges so height and width are multiples of `scale`."""
    height = image.shape[0] - image.shape[0] % scale
    width = image.shape[1] - image.shape[1] % scale
    return image[:height, :width]


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Pillow's BICUBIC resize widens its kernel when it shrinks (antialiasing, like MATLAB's
    # imresize), which is the degradation the published x4 tables are measured on.
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.uint8)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Standard degradation: antialiased bicubic downscale of a modcropped uint8 RGB image."""
    if hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"image {hr.shape[:2]} is not a multiple of the scale {scale}; modcrop it")
    return _resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale))


def cv2_cubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """OpenCV's `INTER_CUBIC` downscale (no antialiasing), the LR the OpenCV peer models saw."""
    import cv2  # Only the peer comparison needs OpenCV.

    if hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"image {hr.shape[:2]} is not a multiple of the scale {scale}; modcrop it")
    size = (hr.shape[1] // scale, hr.shape[0] // scale)
    return cv2.resize(hr, size, interpolation=cv2.INTER_CUBIC)


def degrade(hr: np.ndarray, scale: int, kind: str = "pil") -> np.ndarray:
    """Makes the LR image from a modcropped HR image by the named degradation (see LR_KINDS)."""
    if kind == "pil":
        return bicubic_downscale(hr, scale)
    if kind == "cv2":
        return cv2_cubic_downscale(hr, scale)
    raise ValueError(f"unknown LR kind {kind!r}; expected one of {LR_KINDS}")


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic interpolation, the baseline every super-resolution table reports."""
    return _resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _div2k_sources(path: Path, scale: int) -> list[ImageSource] | None:
    """Recognises the DIV2K layout: either the data-set root (holding `DIV2K_train_HR`) or one of
    its `DIV2K_{train,valid}_HR` folders. Returns None for any other folder."""
    if (path / "DIV2K_train_HR").is_dir():
        path = path / "DIV2K_train_HR"
    match = _DIV2K_HR_DIR.match(path.name)
    if not match:
        return None
    lr_dir = path.parent / f"{match['prefix']}_LR_bicubic" / f"X{scale}"
    if not lr_dir.is_dir():
        log.info("%s has no %s; LR images will be made by bicubic downscaling", path, lr_dir)
    sources = []
    for hr_path in _image_files(path):
        lr_path = lr_dir / f"{hr_path.stem}x{scale}{hr_path.suffix}"
        sources.append(ImageSource(hr_path, lr_path if lr_dir.is_dir() else None))
    return sources


def _srf_sources(files: list[Path], scale: int) -> list[ImageSource] | None:
    """Recognises the SelfExSR layout among `files` (see `_SRF_FILE`): only the HR images of
    this scale are sources, each paired with its LR file; the LR files and the other scales'
    copies are skipped, so they are never scored as if they were ground truth. Files without the
    naming are kept as plain images. Returns None when no file follows the naming."""
    tagged = [(path, _SRF_FILE.match(path.stem)) for path in files]
    if not any(match for _, match in tagged):
        return None
    sources = []
    for path, match in tagged:
        if match is None:
            sources.append(ImageSource(path))
        elif match["kind"] == "HR" and int(match["scale"]) == scale:
            lr_path = path.with_name(f"{match['name']}_SRF_{scale}_LR{path.suffix}")
            sources.append(ImageSource(path, lr_path if lr_path.is_file() else None))
    return sources


def hold_out(
    sources: Sequence[ImageSource], count: int
) -> tuple[list[ImageSource], list[ImageSource]]:
    """Splits off `count` sources spread evenly over the list, for validation.

    Returns:
        (the rest, the held-out ones), both in the list's order.

    Raises:
        ValueError: When fewer than `count + 1` sources remain for training.
    """
    count = min(count, len(sources) - 1)
    if count < 1:
        raise ValueError("need --val-data, or at least two training images for a hold-out")
    stride = len(sources) / count
    picked = {int(i * stride + stride / 2) for i in range(count)}
    rest = [s for i, s in enumerate(sources) if i not in picked]
    held = [s for i, s in enumerate(sources) if i in picked]
    return rest, held


def discover_sources(paths: Iterable[str | Path], scale: int) -> list[ImageSource]:
    """Lists the images under each path: DIV2K folders and SelfExSR-style benchmark folders
    (`*_SRF_4_HR.png` beside `*_SRF_4_LR.png`) as HR/LR pairs, any other folder searched
    recursively for images, and single image files taken as they are.

    Raises:
        FileNotFoundError: A path does not exist.
    """
    sources: list[ImageSource] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            sources.append(ImageSource(path))
        elif path.is_dir():
            div2k = _div2k_sources(path, scale)
            if div2k is not None:
                sources.extend(div2k)
                continue
            files = _image_files(path)
            srf = _srf_sources(files, scale)
            sources.extend(srf if srf is not None else map(ImageSource, files))
        else:
            raise FileNotFoundError(f"data path not found: {path}")
    return sources


def load_pair(source: ImageSource, scale: int, lr_kind: str = "pil") -> ImagePair:
    """Decodes one source into an aligned (HR, LR) pair.

    A source's own LR file (DIV2K, SelfExSR) is the standard bicubic degradation, so it is used
    for `lr_kind="pil"`; any other kind is made from the HR image, as it would be without one.

    Raises:
        UnreadableImageError: Either file cannot be decoded, or a shipped LR file's size does not
            match its HR image.
    """
    hr = modcrop(load_rgb(source.hr_path), scale)
    if min(hr.shape[:2]) == 0:
        raise UnreadableImageError(
            f"{source.hr_path} is narrower or shorter than {scale} pixels: too small for x{scale}"
        )
    if source.lr_path is None or lr_kind != "pil":
        lr = degrade(hr, scale, lr_kind)
    else:
        lr = load_rgb(source.lr_path)
        expected = (hr.shape[0] // scale, hr.shape[1] // scale)
        if lr.shape[:2] != expected:
            raise UnreadableImageError(
                f"LR image {source.lr_path} is {lr.shape[1]}x{lr.shape[0]}, expected "
                f"{expected[1]}x{expected[0]} for {source.hr_path} at x{scale}"
            )
    return ImagePair(source.hr_path.name, hr, lr)


def load_pairs(
    sources: Sequence[ImageSource],
    scale: int,
    min_hr_size: int = 0,
    lr_kind: str = "pil",
    workers: int = 4,
) -> list[ImagePair]:
    """Decodes many sources in parallel, skipping (with a warning naming the file) those that
    cannot be read and those smaller than `min_hr_size` on either side.

    Returns:
        The usable pairs, in the order of `sources`.
    """

    def load(source: ImageSource) -> ImagePair | None:
        try:
            pair = load_pair(source, scale, lr_kind)
        except UnreadableImageError as error:
            log.warning("skipping unreadable image: %s", error)
            return None
        if min(pair.hr.shape[:2]) < min_hr_size:
            log.warning(
                "skipping %s: %dx%d is smaller than the %dpx training patch",
                source.hr_path,
                pair.hr.shape[1],
                pair.hr.shape[0],
                min_hr_size,
            )
            return None
        return pair

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [pair for pair in pool.map(load, sources) if pair is not None]


def augment(lr: np.ndarray, hr: np.ndarray, rotations: int, flip: bool):
    """Rotates by `rotations` quarter turns and optionally mirrors, on the spatial axes only, the
    same way for both images so they stay aligned."""
    lr = np.rot90(lr, rotations, axes=(0, 1))
    hr = np.rot90(hr, rotations, axes=(0, 1))
    if flip:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    return lr, hr


class TrainingPatches(keras.utils.PyDataset):
    """An endless, shuffled stream of aligned random LR/HR patch batches.

    Each pass over the data visits every image once in a fresh random order, taking one random
    crop (random quarter turn and mirror) per visit. Batch `index` of epoch `epoch` depends only on
    (seed, epoch, index), not on thread timing, so a resumed run sees the batches an uninterrupted
    run would have seen.
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        scale: int,
        patch_size: int = 96,
        batch_size: int = 16,
        steps_per_epoch: int = 1000,
        seed: int = 0,
        initial_epoch: int = 0,
        augment: bool = True,
        degradation: Mixture | Blend | None = None,
        workers: int = 2,
        max_queue_size: int = 16,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if patch_size % scale:
            raise ValueError(f"patch size {patch_size} must be a multiple of the scale {scale}")
        if not pairs:
            raise ValueError("no training images left after filtering")
        self.pairs = list(pairs)
        self.scale = scale
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.epoch = initial_epoch
        self.augment = augment
        self.degradation = degradation

    def __len__(self) -> int:
        return self.steps_per_epoch

    @lru_cache(maxsize=4)  # noqa: B019 - the dataset lives as long as the run; a pass is reused.
    def _order(self, data_pass: int) -> np.ndarray:
        return np.random.default_rng([self.seed, data_pass]).permutation(len(self.pairs))

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        lr_size = self.patch_size // self.scale
        first = (self.epoch * self.steps_per_epoch + index) * self.batch_size
        lr_batch = np.empty((self.batch_size, lr_size, lr_size, 3), np.float32)
        hr_batch = np.empty((self.batch_size, self.patch_size, self.patch_size, 3), np.float32)
        for slot in range(self.batch_size):
            sample = first + slot
            pair = self.pairs[self._order(sample // len(self.pairs))[sample % len(self.pairs)]]
            y = int(rng.integers(0, pair.lr.shape[0] - lr_size + 1))
            x = int(rng.integers(0, pair.lr.shape[1] - lr_size + 1))
            if self.degradation is None:
                lr = pair.lr[y : y + lr_size, x : x + lr_size]
            else:
                lr = self._degraded_crop(pair, y, x, rng)
            hr = pair.hr[
                y * self.scale : (y + lr_size) * self.scale,
                x * self.scale : (x + lr_size) * self.scale,
            ]
            if self.augment:
                lr, hr = augment(lr, hr, int(rng.integers(4)), bool(rng.integers(2)))
            lr_batch[slot] = lr
            hr_batch[slot] = hr
        return lr_batch, hr_batch

    def _degraded_crop(self, pair: ImagePair, y: int, x: int, rng: np.random.Generator):
        """The LR crop at (y, x), made afresh from the HR crop by the mixture. The HR crop takes
        up to `DEGRADATION_MARGIN` LR pixels more on each side, so that blur and resize kernels
        see real pixels at the crop's edges rather than a reflection, then the margin is cut."""
        lr_size, scale = self.patch_size // self.scale, self.scale
        top, left = min(DEGRADATION_MARGIN, y), min(DEGRADATION_MARGIN, x)
        bottom = min(DEGRADATION_MARGIN, pair.lr.shape[0] - y - lr_size)
        right = min(DEGRADATION_MARGIN, pair.lr.shape[1] - x - lr_size)
        hr = pair.hr[
            (y - top) * scale : (y + lr_size + bottom) * scale,
            (x - left) * scale : (x + lr_size + right) * scale,
        ]
        lr = apply_mixture(hr, scale, self.degradation, rng)
        return lr[top : top + lr_size, left : left + lr_size]

    def on_epoch_end(self) -> None:
        self.epoch += 1


def center_crop(pair: ImagePair, scale: int, hr_size: int) -> ImagePair:
    """The centred `hr_size` square of a pair and the aligned LR square (deterministic)."""
    lr_size = hr_size // scale
    y = (pair.lr.shape[0] - lr_size) // 2
    x = (pair.lr.shape[1] - lr_size) // 2
    return ImagePair(
        pair.name,
        pair.hr[y * scale : (y + lr_size) * scale, x * scale : (x + lr_size) * scale],
        pair.lr[y : y + lr_size, x : x + lr_size],
    )


def _first_two_differ_where_any_differ(pairs: list[ImagePair]) -> list[ImagePair]:
    """Reorders whole validation images so that the first two differ in height if any two do,
    and in width if any two do.

    On the TensorFlow backend Keras builds the validation dataset's signature from its first two
    batches, fixing every dimension on which they agree; a later image of another height or
    width then stops training with a shape error. Such a pair always exists: take two images of
    different heights; if their widths agree, an image of another width differs in height from
    at least one of them. The order does not change the mean PSNR.
    """
    if len(pairs) < 3:
        return pairs  # both batches are read for the signature
    varies = [len({pair.lr.shape[axis] for pair in pairs}) > 1 for axis in (0, 1)]
    for first, second in itertools.combinations(range(len(pairs)), 2):
        a, b = pairs[first].lr.shape, pairs[second].lr.shape
        if all(a[axis] != b[axis] or not varies[axis] for axis in (0, 1)):
            rest = [pair for i, pair in enumerate(pairs) if i not in (first, second)]
            return [pairs[first], pairs[second], *rest]
    raise AssertionError("unreachable: a pair differing wherever sizes vary always exists")


class ValidationImages(keras.utils.PyDataset):
    """Deterministic validation batches: fixed centre crops of `crop` HR pixels (batched), or the
    whole images one at a time when `crop` is 0. Images smaller than the crop are skipped."""

    def __init__(self, pairs: Sequence[ImagePair], scale: int, crop: int = 0, batch_size: int = 8):
        super().__init__()
        if crop:
            if crop % scale:
                raise ValueError(f"validation crop {crop} must be a multiple of the scale {scale}")
            kept = [p for p in pairs if min(p.hr.shape[:2]) >= crop]
            for skipped in {p.name for p in pairs} - {p.name for p in kept}:
                log.warning(
                    "validation image %s is smaller than the %dpx crop; skipped", skipped, crop
                )
            pairs = [center_crop(p, scale, crop) for p in kept]
        else:
            batch_size = 1  # Whole images differ in size, so they cannot share a batch.
            pairs = _first_two_differ_where_any_differ(list(pairs))
        if not pairs:
            raise ValueError("no validation images left after filtering")
        self.pairs = list(pairs)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    def __getitem__(self, index: int):
        chunk = self.pairs[index * self.batch_size : (index + 1) * self.batch_size]
        lr = np.stack([p.lr for p in chunk]).astype(np.float32)
        hr = np.stack([p.hr for p in chunk]).astype(np.float32)
        return lr, hr
