"""Half-precision (fp16) copies of the exported ONNX model, verified against the fp32 original.

On a GPU the fp16 model runs on tensor cores at about 1.6x the speed of fp32 for outputs 60 dB
apart (../shared/GPU.md). The copy keeps float32 input and output (`keep_io_types=True`), so the
service feeds it exactly what it feeds the fp32 model; only the weights and the activations
inside are fp16.

The parity check runs the fp16 graph and the fp32 graph side by side on random odd-sized inputs.
onnxruntime's CPU provider can run the fp16 graph (where it lacks an fp16 kernel it casts around
the node), so the check runs everywhere; where the CUDA provider is available it runs there too,
since that is where the fp16 model is meant to serve.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

# The fp16 file must sit where the service looks for it, and speak the export's contract.
from service.core.engines.ortconfig import cuda_usable, fp16_path_for
from service.host import atomic_write_bytes
from training.export import INPUT_NAME, OUTPUT_NAME, PARITY_SHAPES

log = logging.getLogger(__name__)

#: Largest allowed |fp16 - fp32| on the 0-255 scale. fp16 has an 11-bit significand, so values
#: near 255 are stored to within 0.125, and errors add up over 37 convolutions; on a real image
#: the two outputs differ by at most 0.6 (60 dB PSNR). One grey level is invisible.
DEFAULT_TOLERANCE = 1.0


class PrecisionError(RuntimeError):
    """The fp16 copy could not be made or failed its verification."""


def fp16_parity(fp32_bytes: bytes, fp16_bytes: bytes, seed: int = 0) -> dict[str, float]:
    """Compares the fp16 and fp32 graphs on random inputs, on every provider available.

    Returns:
        `max_abs_diff` (0-255 scale) and `psnr_db` between the two outputs, worst over inputs,
        plus `max_abs_diff_<provider>` for each provider set that really ran.
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    batches = [rng.uniform(0, 255, shape).astype(np.float32) for shape in PARITY_SHAPES]
    reference = ort.InferenceSession(fp32_bytes, providers=["CPUExecutionProvider"])
    expected = [reference.run([OUTPUT_NAME], {INPUT_NAME: batch})[0] for batch in batches]
    report: dict[str, float] = {"max_abs_diff": 0.0, "psnr_db": float("inf")}
    provider_sets = [["CPUExecutionProvider"]]
    # onnxruntime-gpu lists CUDA as available even on hosts without a GPU, then logs an error
    # and falls back; asking for it only where an NVIDIA driver exists keeps CPU exports quiet.
    if cuda_usable():
        provider_sets.append(["CUDAExecutionProvider", "CPUExecutionProvider"])
    for providers in provider_sets:
        session = ort.InferenceSession(fp16_bytes, providers=providers)
        used = session.get_providers()[0]
        worst = 0.0
        for batch, want in zip(batches, expected, strict=True):
            got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            if got.shape != want.shape or got.dtype != np.float32:
                raise PrecisionError(
                    f"fp16 model gives {got.dtype} {got.shape}, "
                    f"fp32 gives {want.dtype} {want.shape}"
                )
            diff = got.astype(np.float64) - want
            worst = max(worst, float(np.max(np.abs(diff))))
            mse = float(np.mean(diff**2))
            psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
            report["psnr_db"] = min(report["psnr_db"], psnr)
        report[f"max_abs_diff_{used}"] = worst
        report["max_abs_diff"] = max(report["max_abs_diff"], worst)
    return report


def convert_to_fp16(
    src: str | Path, dst: str | Path | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, object]:
    """Writes a verified fp16 copy of the fp32 export `src` to `dst` (default:
    `<stem>_fp16.onnx` beside it) and returns the file's name and parity figures.

    Raises:
        PrecisionError: If the converter fails, `onnx.checker` rejects the result, or the outputs
            differ by more than `tolerance` on the 0-255 scale (nothing is written then).
    """
    import onnx
    from onnxconverter_common import float16

    src = Path(src)
    dst = fp16_path_for(src) if dst is None else Path(dst)
    model = onnx.load(src)
    with warnings.catch_warnings():
        # The converter warns for every weight below fp16's smallest normal number that it
        # rounds; the parity check below is what says whether that mattered.
        warnings.simplefilter("ignore", UserWarning)
        try:
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
        except Exception as exc:  # the converter raises assorted types on odd graphs
            raise PrecisionError(f"fp16 conversion of {src} failed: {exc}") from exc
    # The converter keeps metadata_props; the precision entry tells what this file is.
    onnx.helper.set_model_props(
        converted,
        {**{entry.key: entry.value for entry in converted.metadata_props}, "precision": "fp16"},
    )
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise PrecisionError(f"onnx.checker rejected the fp16 model: {exc}") from exc
    serialized = converted.SerializeToString()
    parity = fp16_parity(model.SerializeToString(), serialized)
    if parity["max_abs_diff"] > tolerance:
        raise PrecisionError(
            f"fp16 output differs from fp32 by {parity['max_abs_diff']:.3f} > {tolerance}"
        )
    atomic_write_bytes(dst, serialized)
    log.info(
        "wrote %s (max |fp16 - fp32| = %.3f, %.1f dB)",
        dst,
        parity["max_abs_diff"],
        parity["psnr_db"],
    )
    return {"fp16_file": dst.name, "fp16_parity": parity, "fp16_tolerance": tolerance}
