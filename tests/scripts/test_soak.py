"""A short run of the soak (scripts/soak.py) against the real server, with a tiny model.

One round of 40 mixed, hostile requests on loopback, opening with every bomb and metadata case
(`--sweep`): every answer must be a documented one, every 200 must read back at 4x (and the
metadata cases' outputs must be accepted when posted back), and the server must stay healthy.
Bounded: the soak's own time limit, and a subprocess timeout above it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.service.helpers import build_model

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_of_the_real_server_passes(tmp_path: Path) -> None:
    model = build_model(tmp_path / "tiny.onnx")
    env = {
        **os.environ,
        "UPSCALER_PROVIDERS": "cpu",
        "UPSCALER_TILE_SIZE": "64",
        # The cut-off multipart body waits for the upload timeout; keep the round short.
        "UPSCALER_UPLOAD_TIMEOUT_SECONDS": "5",
    }
    command = [sys.executable, "scripts/soak.py", "--model", str(model), "--rounds", "1"]
    command += [
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--seed",
        "1",
        "--time-limit",
        "240",
        "--sweep",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=360, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "round 1: 48 requests" in result.stdout
    assert "/healthz 200" in result.stdout
