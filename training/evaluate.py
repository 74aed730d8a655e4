"""Evaluation by the protocol the super-resolution literature uses.

For every image of a benchmark folder: crop HR to a multiple of the scale, make LR by the
antialiased bicubic downscale (or OpenCV's INTER_CUBIC, for models trained on that), upscale,
round to uint8, and score PSNR and SSIM on the BT.601 Y channel with `scale` pixels shaved from
each border. Bicubic upscaling is scored the same way beside the model, as a sanity anchor (28.43
dB on Set5 x4).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from service.core.ensemble import self_ensemble
from training import data
from training.degradations import CATEGORIES
from training.protocol import psnr_y, ssim_y


class Upscaler:
    """A model behind one call: HxWx3 uint8 LR in, HxWx3 float32 SR (0-255, unrounded) out.

    Images whose LR side exceeds `tile_size` go through the service's seamless tiler, so memory
    stays bounded however large the benchmark images are.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        scale: int,
        tile_size: int = 256,
        overlap: int = 16,
        name: str = "model",
    ):
        self.run_batch = run_batch
        self.scale = scale
        self.tile_size = tile_size
        self.overlap = overlap
        self.name = name

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        if max(lr.shape[:2]) <= self.tile_size:
            batch = lr[None].astype(np.float32)
            return np.asarray(self.run_batch(batch), np.float32)[0]
        from service.core.tiling import upscale_tiled

        return upscale_tiled(
            lr,
            lambda tiles: np.asarray(self.run_batch(tiles), np.float32),
            scale=self.scale,
            tile_size=self.tile_size,
            overlap=self.overlap,
        ).astype(np.float32)


def load_upscaler(path: str | Path, tile_size: int = 256) -> Upscaler:
    """Loads a `.keras` checkpoint (on the active Keras backend, in float32) or an `.onnx`
    export (on onnxruntime's CPU provider) as an `Upscaler`."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        input_name = session.get_inputs()[0].name
        if "scale" in meta:
            scale = int(meta["scale"])
        else:
            probe = np.zeros((1, 4, 4, 3), np.float32)
            scale = session.run(None, {input_name: probe})[0].shape[1] // 4
        return Upscaler(
            lambda batch: session.run(None, {input_name: batch})[0],
            scale,
            tile_size,
            name=path.name,
        )
    from training.model import describe_edsr, load_edsr

    model = load_edsr(path)
    return Upscaler(
        lambda batch: model(batch, training=False),
        describe_edsr(model)["scale"],
        tile_size,
        name=path.name,
    )


def _round(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def evaluate_folder(
    upscaler: Callable[[np.ndarray], np.ndarray],
    folder: str | Path,
    scale: int,
    lr_kind: str = "pil",
    ensemble: bool = False,
    category: str | None = None,
) -> dict:
    """Scores a model and bicubic on every image of one benchmark folder.

    Args:
        upscaler: Maps an HxWx3 uint8 LR image to its float SR image.
        folder: A folder of HR images (searched recursively).
        scale: The upscaling factor.
        lr_kind: "pil" (antialiased bicubic, the standard) or "cv2" (INTER_CUBIC).
        ensemble: Average over the 8 flips and rotations (self-ensemble).
        category: Make LR by this `degradations.CATEGORIES` recipe instead of `lr_kind`, its
            randomness seeded by the image's name, so every model sees the same LR images.

    Returns:
        A dict with the set's mean PSNR/SSIM for the model and for bicubic, the model's mean
        seconds per image, and per-image figures.
    """
    sources = data.discover_sources([folder], scale)
    if not sources:
        raise ValueError(f"no images in {folder}")
    rows = []
    for source in sources:
        pair = data.load_pair(source, scale, lr_kind)
        if category is not None:
            rng = np.random.default_rng(zlib.crc32(pair.name.encode()))
            pair = data.ImagePair(pair.name, pair.hr, CATEGORIES[category](pair.hr, scale, rng))
        started = time.perf_counter()
        sr = self_ensemble(upscaler, pair.lr) if ensemble else upscaler(pair.lr)
        seconds = time.perf_counter() - started
        sr = _round(sr)
        bicubic = data.bicubic_upscale(pair.lr, scale)
        rows.append(
            {
                "image": pair.name,
                "psnr": psnr_y(sr, pair.hr, scale),
                "ssim": ssim_y(sr, pair.hr, scale),
                "bicubic_psnr": psnr_y(bicubic, pair.hr, scale),
                "bicubic_ssim": ssim_y(bicubic, pair.hr, scale),
                "seconds": seconds,
            }
        )

    def mean(key: str) -> float:
        return float(np.mean([row[key] for row in rows]))

    return {
        "set": Path(folder).name,
        "images": len(rows),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "bicubic_psnr": mean("bicubic_psnr"),
        "bicubic_ssim": mean("bicubic_ssim"),
        "seconds_per_image": mean("seconds"),
        "per_image": rows,
    }


def evaluate_sets(
    upscaler: Upscaler,
    folders: Iterable[str | Path],
    scale: int | None = None,
    lr_kind: str = "pil",
    self_ensemble: bool = False,
) -> dict:
    """Evaluates one model on several benchmark folders; see `evaluate_folder`."""
    scale = scale or upscaler.scale
    return {
        "model": upscaler.name,
        "scale": scale,
        "lr_kind": lr_kind,
        "self_ensemble": self_ensemble,
        "protocol": f"Y (BT.601) PSNR/SSIM, {scale}px border shaved, HR cropped to a multiple "
        f"of {scale}, SR rounded to uint8",
        "sets": [evaluate_folder(upscaler, f, scale, lr_kind, self_ensemble) for f in folders],
    }


def format_table(results: dict) -> str:
    """A plain-text table of `evaluate_sets` results."""
    lines = [
        f"{results['model']}  x{results['scale']}  LR: {results['lr_kind']}"
        f"{'  self-ensemble' if results['self_ensemble'] else ''}",
        f"{'set':<12}{'images':>7}{'bicubic PSNR':>14}{'SSIM':>8}{'model PSNR':>12}{'SSIM':>8}"
        f"{'s/image':>9}",
    ]
    for row in results["sets"]:
        lines.append(
            f"{row['set']:<12}{row['images']:>7}{row['bicubic_psnr']:>14.2f}"
            f"{row['bicubic_ssim']:>8.4f}{row['psnr']:>12.2f}{row['ssim']:>8.4f}"
            f"{row['seconds_per_image']:>9.2f}"
        )
    lines.append(results["protocol"])
    return "\n".join(lines)


def evaluate_categories(
    upscaler: Upscaler, folders: Iterable[str | Path], categories: Iterable[str]
) -> dict:
    """Scores one model and bicubic on several sets under each degradation category (see
    `degradations.CATEGORIES`): how the model does on the kinds of images people upload."""
    rows = []
    for category in categories:
        for folder in folders:
            result = evaluate_folder(upscaler, folder, upscaler.scale, category=category)
            rows.append(
                {
                    "category": category,
                    "set": result["set"],
                    "psnr": result["psnr"],
                    "bicubic_psnr": result["bicubic_psnr"],
                    "gain": result["psnr"] - result["bicubic_psnr"],
                }
            )
    return {"model": upscaler.name, "scale": upscaler.scale, "categories": rows}


def format_category_table(results: dict) -> str:
    """Model minus bicubic (Y-PSNR, dB) per category (rows) and set (columns)."""
    sets = list(dict.fromkeys(row["set"] for row in results["categories"]))
    gains = {(row["category"], row["set"]): row["gain"] for row in results["categories"]}
    lines = [
        f"{results['model']}  x{results['scale']}: model minus bicubic, Y-PSNR dB",
        f"{'category':<14}" + "".join(f"{name:>10}" for name in sets),
    ]
    for category in dict.fromkeys(row["category"] for row in results["categories"]):
        lines.append(f"{category:<14}" + "".join(f"{gains[category, s]:>+10.2f}" for s in sets))
    return "\n".join(lines)
