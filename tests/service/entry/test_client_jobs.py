"""The `upscale` command with jobs, against a real server on 127.0.0.1: large images as jobs
with a bar of tiles, small ones through POST /upscale, and `--resume` after Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.entry.client import main
from service.entry.jobs_client import job_id_for
from tests.service.api.jobs_helpers import job_models, jobs_server, wait_job
from tests.service.helpers import png_bytes
from tests.web.live import LiveServer, time_limit

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Any]]:
    models = job_models(tmp_path_factory.mktemp("cli-models"))
    with jobs_server(models, tmp_path_factory.mktemp("cli-jobs")) as live:
        yield live


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    with time_limit(90):
        yield


def _upscaled(live: LiveServer, data: bytes, **params: str) -> bytes:
    answer = httpx.post(
        f"{live.url}/upscale",
        content=data,
        params=params,
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert answer.status_code == 200
    return answer.content


def test_large_images_go_as_jobs_with_a_bar_of_tiles_small_ones_directly(
    server: tuple[LiveServer, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, _ = server
    large, small = png_bytes(40, 30, seed=1), png_bytes(8, 8, seed=2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "large.png").write_bytes(large)
    (tmp_path / "in" / "small.png").write_bytes(small)
    direct = live.metric("upscaler_requests_total", model="fast", status="200")
    # 40 x 30 = 1200 pixels: over a threshold of 0.001 MP; 8 x 8 under it.
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--url", live.url]
    status = main([*args, "--job-threshold", "0.001", "--progress"])
    assert status == 0
    assert (tmp_path / "out" / "large_x4.png").read_bytes() == _upscaled(live, large)
    assert (tmp_path / "out" / "small_x4.png").read_bytes() == _upscaled(live, small)
    # One direct request for the small file (and two made by this test).
    assert live.metric("upscaler_requests_total", model="fast", status="200") == direct + 3
    assert "tile" in capsys.readouterr().err
    job_id = job_id_for(large, {}, "png")
    assert httpx.get(f"{live.url}/jobs/{job_id}").status_code == 404  # downloaded, deleted


def test_resume_picks_up_the_job_an_interrupted_run_left(
    server: tuple[LiveServer, Any], tmp_path: Path
) -> None:
    live, slow = server
    image = png_bytes(64, 64, seed=3)  # 25 tiles of the slow model: about 5 s
    source, target = tmp_path / "photo.png", tmp_path / "photo_x4.png"
    source.write_bytes(image)
    command = [sys.executable, "-m", "service.entry.client", str(source), "--url", live.url]
    options = ["--model", "slow", "--job-threshold", "0"]
    calls = slow.calls
    run = subprocess.Popen(
        [*command, *options], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    job_id = job_id_for(image, {"model": "slow"}, "png")
    wait_job(live, job_id, lambda j: (j.get("progress") or {}).get("tiles_done", 0) >= 2)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == 130
    assert "--resume picks them up" in run.communicate()[1]
    assert not target.exists()

    assert main([str(source), "--url", live.url, *options, "--resume"]) == 0
    assert target.read_bytes() == _upscaled(live, image, model="slow")
    # One pass over the 25 tiles for the job (and one for the check above): not started over.
    assert slow.calls - calls == 2 * 25
