"""The real CUDA path: provider options, fp16, I/O binding and batched tiles through the app.

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

from service.config import Settings
from service.main import create_app
from service.ortconfig import cuda_usable
from service.runtime import UpscalerRuntime
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


def test_cuda_runtime_uses_the_service_options_fp16_and_binding(gpu_models: Path) -> None:
    runtime = UpscalerRuntime(
        gpu_models, providers=CUDA, tile_size=32, batch_size=4, io_binding=True
    )
    assert runtime.primary_provider == "CUDAExecutionProvider", runtime.fallback_reason
    options = runtime._session.get_provider_options()["CUDAExecutionProvider"]
    assert options["prefer_nhwc"] == "1"
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert (runtime.precision, runtime.io_binding) == ("fp16", True)
    runtime.warm_up()
    batch = np.stack([noise_image(32, 32, seed=s) for s in range(4)]).astype(np.float32)
    expected = batch_runner(gpu_models)(batch)
    assert np.abs(runtime.run(batch) - expected).max() <= 1.0
    assert np.abs(runtime.run(batch[:1]) - expected[:1]).max() <= 1.0  # unbound shape


def test_cuda_fp32_matches_the_cpu(gpu_models: Path) -> None:
    runtime = UpscalerRuntime(gpu_models, providers=CUDA, tile_size=32, precision="fp32")
    batch = noise_image(32, 32)[np.newaxis].astype(np.float32)
    assert runtime.precision == "fp32"
    # TF32 convolutions on recent GPUs keep about 3 decimal digits.
    assert np.abs(runtime.run(batch) - batch_runner(gpu_models)(batch)).max() <= 0.5


def test_app_batches_concurrent_requests_on_the_gpu(gpu_models: Path) -> None:
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
        assert (ready["precision"], ready["io_binding"], ready["tile_mode"]) == (
            "fp16",
            False,
            "fixed",
        )
        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(lambda _: post(client), range(8)))
        assert client.get("/readyz").json()["batching"]["batches"] > 0
    for output in outputs:
        assert np.abs(output.astype(int) - reference).max() <= 1
