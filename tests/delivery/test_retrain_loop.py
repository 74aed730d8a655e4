"""The retrain -> re-export -> serve loop end to end, with a tiny model: scripts/retrain.sh trains,
exports and evaluates, installs the model where the service reads it, and after a restart the
service's /readyz reports the new model's metadata."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from tests.conftest import synthetic_photo
from tests.delivery.conftest import ROOT
from tests.service.conftest import build_model

SCRIPT = ROOT / "scripts" / "retrain.sh"
TINY_RUN = [
    "--steps", "2", "--eval-every", "1", "--batch-size", "2", "--patch-size", "32",
    "--filters", "4", "--blocks", "1", "--val-holdout", "1", "--verbose", "0", "--workers", "1",
]  # fmt: skip


def _retrain(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        # EXPORT_ARGS only as the test gives it, whatever the shell running the tests exports.
        env={
            **{k: v for k, v in os.environ.items() if k != "EXPORT_ARGS"},
            "PYTHON": sys.executable,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=900,
    )


def _serve(model: Path):
    """A started app on `model`, like `make serve` after a restart (CPU, small tiles)."""
    settings = Settings(
        model_path=model, providers=["CPUExecutionProvider"], tile_size=16, tile_overlap=2
    )
    return TestClient(create_app(settings))


def _ready(client: TestClient) -> dict:
    assert client.app.state.context.lifecycle.wait_warm(timeout=60), "warm-up did not finish"
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(5):
        Image.fromarray(synthetic_photo(64, 80, seed)).save(folder / f"{seed}.png")
    return folder


def _metadata(model: Path) -> dict[str, str]:
    import onnx

    return {prop.key: prop.value for prop in onnx.load(model).metadata_props}


@pytest.mark.slow
@pytest.mark.parametrize("export_args", [None, ""], ids=["default-fp16", "no-fp16"])
def test_retrain_exports_into_models_and_the_restarted_service_serves_it(
    photos, tmp_path, export_args
):
    models = tmp_path / "models"
    models.mkdir()
    served = models / "edsr_x4.onnx"
    build_model(served)  # the model served before retraining: 8 filters, 0 blocks
    stale_fp16 = build_model(models / "edsr_x4_fp16.onnx")  # and its half-precision copy
    with _serve(served) as client:
        assert _ready(client)["model"]["metadata"]["filters"] == "8"

    run = tmp_path / "run"
    env = {"RUN_DIR": str(run), "MODEL_OUT": str(served), "BENCH": str(photos)}
    if export_args is not None:
        env["EXPORT_ARGS"] = export_args
    result = _retrain(["--data", str(photos), *TINY_RUN], **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("1/4 train", "2/4 export", "3/4 evaluate", "4/4 install"):
        assert step in result.stdout
    assert (run / "best.keras").is_file() and (run / "edsr_x4.onnx").is_file()
    assert "bicubic" in (run / "eval.txt").read_text()
    sidecar = json.loads((models / "edsr_x4.json").read_text())
    assert sidecar["filters"] == "4" and sidecar["blocks"] == "1"
    assert not list(models.glob("*.tmp"))
    # The service would prefer an fp16 copy on CUDA: the previous model's must not survive.
    # By default the new model's copy replaces it (as shipped); with no export flags it goes.
    if export_args is None:
        assert _metadata(stale_fp16)["filters"] == "4"
    else:
        assert not stale_fp16.exists()

    # The "restart": a new app on the same path now serves the retrained model.
    with _serve(served) as client:
        ready = _ready(client)
        metadata = ready["model"]["metadata"]
        assert ready["model"]["path"] == str(served)
        assert ready["model"]["scale"] == 4
        assert (metadata["filters"], metadata["blocks"], metadata["scale"]) == ("4", "1", "4")
        assert metadata["steps"] in ("1", "2")
        assert str(photos) in metadata["training_data"]
        assert metadata["export_date"] == sidecar["export_date"]

        buffer = io.BytesIO()
        Image.fromarray(synthetic_photo(10, 14, seed=9)).save(buffer, format="PNG")
        response = client.post("/upscale", files={"file": ("x.png", buffer.getvalue())})
        assert response.status_code == 200, response.text
        assert response.headers["X-Output-Size"] == "56x40"


@pytest.mark.slow
def test_retrain_installs_a_named_model_trained_on_a_degradation_preset(photos, tmp_path):
    models = tmp_path / "models"
    run = tmp_path / "run"
    env = {"RUN_DIR": str(run), "MODELS_DIR": str(models), "EXPORT_ARGS": ""}
    env |= {"MODEL_NAME": "edsr_x4_real", "DEGRADATION": "realistic"}
    result = _retrain(["--data", str(photos), *TINY_RUN], **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["degradation"] == "realistic"
    assert _metadata(models / "edsr_x4_real.onnx")["degradation"] == "realistic"
    assert json.loads((models / "edsr_x4_real.json").read_text())["degradation"] == "realistic"


def test_retrain_refuses_out_and_a_model_path_that_is_not_onnx(tmp_path):
    result = _retrain(["--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.returncode == 2 and "RUN_DIR" in result.stderr
    result = _retrain(["--data", str(tmp_path)], MODEL_OUT=str(tmp_path / "model.bin"))
    assert result.returncode == 2 and ".onnx" in result.stderr


def test_retrain_failure_leaves_the_served_model_alone(tmp_path):
    served = build_model(tmp_path / "edsr_x4.onnx")
    before = served.read_bytes()
    result = _retrain(
        ["--data", str(tmp_path / "no-such-folder"), *TINY_RUN],
        RUN_DIR=str(tmp_path / "run"),
        MODEL_OUT=str(served),
    )
    assert result.returncode != 0
    assert "4/4 install" not in result.stdout
    assert served.read_bytes() == before
