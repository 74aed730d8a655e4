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

from service.entry.client import HttpUpscaler, main
from service.entry.jobs_client import JobsUpscaler, cli_owner, job_id_for
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
    job_id = job_id_for(large, {}, "png", cli_owner())
    assert httpx.get(f"{live.url}/jobs/{job_id}").status_code == 404  # downloaded, deleted


def test_resume_picks_up_the_job_an_interrupted_run_left(
    server: tuple[LiveServer, Any], tmp_path: Path
) -> None:
    live, slow = server
    # Many tiles of the slow model (about 13 s), so that the job is far from done when the
    # interrupt lands, however loaded the machine.
    image = png_bytes(96, 96, seed=3)
    source, target = tmp_path / "photo.png", tmp_path / "photo_x4.png"
    source.write_bytes(image)
    command = [sys.executable, "-m", "service.entry.client", str(source), "--url", live.url]
    options = ["--model", "slow", "--job-threshold", "0"]
    calls = slow.calls
    run = subprocess.Popen(
        [*command, *options],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
        # A shell starts background jobs with Ctrl-C ignored, and a child inherits that (and
        # then Python installs no KeyboardInterrupt): give it the terminal's default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    job_id = job_id_for(image, {"model": "slow"}, "png", cli_owner())
    job = wait_job(
        live,
        job_id,
        lambda j: j.get("status") == "running" and j["progress"]["tiles_done"] >= 2,
    )
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == 130
    assert "--resume picks them up" in run.communicate()[1]
    assert not target.exists()

    assert main([str(source), "--url", live.url, *options, "--resume"]) == 0
    assert target.read_bytes() == _upscaled(live, image, model="slow")
    # One pass over the tiles for the job (and one for the check above): not started over.
    assert slow.calls - calls == 2 * job["progress"]["tiles_total"]


def test_a_submit_whose_answer_was_lost_is_not_deleted_and_sent_again(
    server: tuple[LiveServer, Any],
) -> None:
    """The PUT reaches the service, its answer is lost, the retry gets 200: that is this run's
    own job, not one an earlier run left to start over."""
    live, _ = server
    image = png_bytes(40, 30, seed=5)
    methods: list[str] = []

    class LosingTransport(httpx.HTTPTransport):
        lost = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            methods.append(request.method)
            response = super().handle_request(request)
            if request.method == "PUT" and not LosingTransport.lost:
                LosingTransport.lost = True
                response.close()
                raise httpx.ReadError("the answer was lost on the way back")
            return response

    http = HttpUpscaler(
        live.url,
        fmt="png",
        quality="standard",
        model=None,
        retries=2,
        timeout=30,
        sleep=lambda seconds: None,
    )
    http.client = httpx.Client(transport=LosingTransport(), timeout=30)
    upscaler = JobsUpscaler(http, threshold_pixels=0, resume=False, show_progress=False)
    try:
        upscaled = upscaler.upscale(image, "photo.png", lambda count: None)
    finally:
        upscaler.close()
    assert upscaled.content == _upscaled(live, image)
    # The PUT and its retry; one DELETE, once the result was downloaded.
    assert (methods.count("PUT"), methods.count("DELETE")) == (2, 1)


def test_another_persons_job_for_the_same_image_is_left_alone(
    server: tuple[LiveServer, Any], tmp_path: Path
) -> None:
    """Without keys every client shares the service's job IDs: a run without --resume starts
    its own earlier jobs over, never someone else's job for the same image."""
    live, _ = server
    image = png_bytes(40, 30, seed=7)
    theirs = job_id_for(image, {}, "png", "someone@elsewhere")
    mine = job_id_for(image, {}, "png", cli_owner())
    assert theirs != mine
    headers = {"Content-Type": "image/png"}
    assert httpx.put(f"{live.url}/jobs/{theirs}", content=image, headers=headers).status_code == 202
    (tmp_path / "photo.png").write_bytes(image)
    command = [str(tmp_path / "photo.png"), "--url", live.url, "--job-threshold", "0"]
    assert main([*command, "--no-progress"]) == 0
    assert (tmp_path / "photo_x4.png").read_bytes() == _upscaled(live, image)
    wait_job(live, theirs, lambda j: j.get("status") == "succeeded")
    assert httpx.get(f"{live.url}/jobs/{mine}").status_code == 404  # downloaded, deleted
    assert httpx.delete(f"{live.url}/jobs/{theirs}").status_code == 204


def test_who_runs_the_command_is_in_the_id_even_without_a_login_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_login() -> str:
        raise OSError("no login name")

    named = cli_owner()
    monkeypatch.setattr("getpass.getuser", no_login)
    assert cli_owner().endswith(named[named.index("@") :])  # the machine is still there


def test_with_a_key_the_id_does_not_depend_on_who_runs_it() -> None:
    def owner(api_key: str) -> str:
        http = HttpUpscaler(
            "http://127.0.0.1:9", fmt="png", quality="standard", model=None, retries=0,
            timeout=5, api_key=api_key,
        )  # fmt: skip
        jobs = JobsUpscaler(http, threshold_pixels=0, resume=False, show_progress=False)
        jobs.close()
        return jobs.owner

    assert owner("a-key") == "" and owner("") == cli_owner()


def test_identical_images_share_one_job(server: tuple[LiveServer, Any], tmp_path: Path) -> None:
    live, slow = server
    image = png_bytes(40, 30, seed=6)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(image)
    options = ["--model", "slow", "--job-threshold", "0", "--jobs", "2", "--no-progress"]
    before = slow.calls
    assert main([str(folder), "-o", str(tmp_path / "out"), "--url", live.url, *options]) == 0
    ran = slow.calls - before
    expected = _upscaled(live, image, model="slow")
    # One upscale for the check took as many model calls as the command for both images.
    assert slow.calls - before == 2 * ran
    for name in ("a_x4.png", "b_x4.png"):
        assert (tmp_path / "out" / name).read_bytes() == expected


@pytest.mark.parametrize(
    "options, why",
    [
        (["--job-threshold", "-1"], "--job-threshold must not be negative"),
        (["--local", "--resume"], "--local keeps none"),
    ],
)
def test_options_that_cannot_work_are_usage_errors(
    options: list[str], why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main([str(tmp_path / "photo.png"), *options])
    assert usage.value.code == 2 and why in capsys.readouterr().err
