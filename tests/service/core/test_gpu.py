"""The real CUDA path: provider options, fp16 and batched fixed tiles through the app.

Marked `gpu` and skipped unless onnxruntime really runs the CUDA provider here. Run on a GPU
machine with `python -m pytest -m gpu tests/service`.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.core.engines import OnnxEngine
from service.core.engines.ortconfig import cuda_usable
from tests.service.helpers import CPU_ONLY, batch_runner, noise_image, png_bytes, wait_until_ready

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_usable(), reason="needs the CUDA provider and a GPU"),
]


@pytest.fixture(scope="module")
def gpu_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deep tiny model and its real fp16 export, side by side."""
    pytest.importorskip("onnxconverter_common")
    from tests.service.helpers import build_model
    from training.precision import convert_to_fp16

    path = build_model(tmp_path_factory.mktemp("gpu") / "edsr_x4.onnx", hidden_layers=2)
    convert_to_fp16(path)
    return path


def _engine(path: Path, **overrides: object) -> OnnxEngine:
    values = {"providers": CUDA, "tile_size": 32, "tile_overlap": 4}
    return OnnxEngine(Settings(model_path=path, **{**values, **overrides}))


def test_cuda_engine_uses_the_service_options_and_fp16(gpu_models: Path) -> None:
    engine = _engine(gpu_models, tile_batch_size=4)
    assert engine.info.provider == "CUDAExecutionProvider", engine.info.fallback_reason
    options = engine._session.get_provider_options()["CUDAExecutionProvider"]
    assert options["prefer_nhwc"] == "1"
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert (engine.info.precision, engine.info.tile_mode) == ("fp16", "fixed")
    engine.warm_up()
    batch = np.stack([noise_image(32, 32, seed=s) for s in range(4)]).astype(np.float32)
    expected = batch_runner(gpu_models)(batch)
    assert np.abs(engine.run(batch) - expected).max() <= 1.0
    assert np.abs(engine.run(batch[:1]) - expected[:1]).max() <= 1.0  # another shape


def test_cuda_fp32_matches_the_cpu(gpu_models: Path) -> None:
    engine = _engine(gpu_models, precision="fp32")
    batch = noise_image(32, 32)[np.newaxis].astype(np.float32)
    assert engine.info.precision == "fp32"
    # TF32 convolutions on recent GPUs keep about 3 decimal digits.
    assert np.abs(engine.run(batch) - batch_runner(gpu_models)(batch)).max() <= 0.5


def test_app_serves_concurrent_requests_in_batched_tiles_on_the_gpu(gpu_models: Path) -> None:
    settings = Settings(
        model_path=gpu_models,
        providers=CUDA,
        tile_size=16,
        tile_overlap=4,
        tile_batch_size=4,
        max_concurrency=4,
        max_queue=8,
    )
    cpu = Settings(model_path=gpu_models, providers=CPU_ONLY, tile_size=16, tile_overlap=4)
    upload = png_bytes(40, 30, seed=3)

    def post(client: TestClient) -> np.ndarray:
        response = client.post("/upscale", content=upload, headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        return np.asarray(Image.open(io.BytesIO(response.content)))

    with TestClient(create_app(cpu)) as client:
        wait_until_ready(client)
        reference = post(client)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        ready = client.get("/readyz").json()
        assert (ready["precision"], ready["tile_mode"], ready["tile_batch_size"]) == (
            "fp16",
            "fixed",
            4,
        )
        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(lambda _: post(client), range(8)))
    for output in outputs:
        assert np.abs(output.astype(int) - reference).max() <= 1
