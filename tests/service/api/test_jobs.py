"""Jobs against a real server on 127.0.0.1: submit, events, result, idempotent PUT, cancel,
delete, preview, expiry, the size cap, keys, and the error table shared with /upscale."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import ExifTags, Image

from service.api.app import create_app
from service.core.jobs.store import NewJob
from tests.service.api.jobs_helpers import (
    TERMINAL,
    events,
    job_models,
    jobs_server,
    submit,
    wait_job,
)
from tests.service.helpers import encode, noise_image, png_bytes
from tests.web.live import LiveServer, time_limit, tiny_settings


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    with time_limit(90):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return job_models(tmp_path_factory.mktemp("job-models"))


@pytest.fixture(scope="module")
def server(
    models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, Any]]:
    with jobs_server(models, tmp_path_factory.mktemp("jobs")) as live:
        yield live


def test_submit_then_events_then_result_matches_upscale(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    image = png_bytes(40, 24, seed=5)
    answer = submit(live, image)
    assert answer.status_code == 202
    job = answer.json()
    assert answer.headers["location"] == f"{live.url}/jobs/{job['id']}"
    assert job["status"] in ("queued", "running") and job["model"] == "fast"
    seen = list(events(f"{live.url}/jobs/{job['id']}/events"))
    assert seen[-1]["status"] == "succeeded"
    done = [view["progress"]["tiles_done"] for view in seen]
    assert (
        done == sorted(done)
        and seen[-1]["progress"]["tiles_done"] == seen[-1]["progress"]["tiles_total"] > 1
    )
    result = httpx.get(f"{live.url}/jobs/{job['id']}/result", timeout=10)
    direct = httpx.post(
        f"{live.url}/upscale", content=image, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert result.status_code == 200 and result.content == direct.content
    for header in ("x-output-size", "x-upscaler-model", "x-upscaler-model-version", "content-type"):
        assert result.headers[header] == direct.headers[header]
    final = seen[-1]
    assert final["result"]["width"] == 160 and final["timings"]["model_ms"] is not None
    assert final["expires_at"] is not None and final["queue_position"] is None


def test_put_with_the_same_id_and_input_returns_the_existing_job(
    server: tuple[LiveServer, Any],
) -> None:
    live, _ = server
    image = png_bytes(8, 8, seed=6)
    url = f"{live.url}/jobs/my-job_1"
    first = httpx.put(url, content=image, headers={"Content-Type": "image/png"}, timeout=30)
    again = httpx.put(url, content=image, headers={"Content-Type": "image/png"}, timeout=30)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] == "my-job_1"
    other = httpx.put(url, content=png_bytes(8, 8, seed=7), headers={"Content-Type": "image/png"})
    assert other.status_code == 409 and "another input" in other.json()["detail"]


def test_put_refuses_a_malformed_id_before_reading_the_body(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    answer = httpx.put(
        f"{live.url}/jobs/a.b", content=png_bytes(), headers={"Content-Type": "image/png"}
    )
    assert answer.status_code == 422 and "A-Z a-z 0-9 _ -" in answer.json()["detail"]


def test_submit_shares_the_error_table_of_upscale(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    cases = [
        (b"not an image", {}, {}, 415),
        (png_bytes(), {"quality": "best"}, {}, 422),
        (png_bytes(), {"model": "nope"}, {}, 422),
        (png_bytes(), {}, {"Accept": "image/gif"}, 406),
        (png_bytes(200, 100), {}, {}, 413),
    ]
    for data, params, headers, status in cases:
        answer = submit(live, data, params=params, headers=headers)
        assert answer.status_code == status, (params, headers, answer.text)
        assert set(answer.json()) == {"detail"}


def test_metadata_keep_reaches_the_result(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (48.0, 51.0, 24.0)}
    photo = encode(Image.fromarray(noise_image(4, 6)), "JPEG", exif=exif.tobytes())
    headers = {"Content-Type": "image/jpeg"}
    job = submit(live, photo, params={"metadata": "keep"}, headers=headers).json()
    assert job["metadata"] == "keep"
    wait_job(live, job["id"], lambda j: j["status"] == "succeeded")
    result = Image.open(io.BytesIO(httpx.get(f"{live.url}/jobs/{job['id']}/result").content))
    assert result.getexif().get_ifd(ExifTags.IFD.GPSInfo)[1] == "N"


def test_cancel_stops_a_running_job_between_tiles_and_frees_the_slot(
    server: tuple[LiveServer, Any],
) -> None:
    live, slow = server
    job = submit(live, png_bytes(64, 64, seed=8), params={"model": "slow"}).json()
    wait_job(live, job["id"], lambda j: (j["progress"]["tiles_done"] or 0) >= 1)
    canceled = httpx.post(f"{live.url}/jobs/{job['id']}/cancel", timeout=10)
    calls = slow.calls
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert canceled.json()["progress"]["tiles_total"] > 10
    # The slot is free at once for the next job; at most the tile in flight finished.
    after = submit(live, png_bytes(8, 8, seed=9)).json()
    assert wait_job(live, after["id"], lambda j: j["status"] in TERMINAL)["status"] == "succeeded"
    assert slow.calls - calls <= 1
    time.sleep(3 * 0.2)
    assert slow.calls - calls <= 1, "model calls went on after the cancel"
    result = httpx.get(f"{live.url}/jobs/{job['id']}/result")
    assert result.status_code == 404 and "canceled" in result.json()["detail"]


def test_queued_jobs_show_their_place_and_run_in_order(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    first = submit(live, png_bytes(64, 64, seed=20), params={"model": "slow"}).json()
    wait_job(live, first["id"], lambda j: j["status"] == "running")
    second, third = (submit(live, png_bytes(8, 8, seed=seed)).json() for seed in (21, 22))
    assert (second["queue_position"], third["queue_position"]) == (1, 2)
    assert second["status"] == "queued" and second["progress"]["tiles_total"] is None
    httpx.post(f"{live.url}/jobs/{first['id']}/cancel")
    done = [
        wait_job(live, job["id"], lambda j: j["status"] == "succeeded") for job in (second, third)
    ]
    assert done[0]["started_at"] <= done[1]["started_at"]


def test_preview_shows_finished_tiles_and_leaves_the_rest_transparent(
    server: tuple[LiveServer, Any],
) -> None:
    live, _ = server
    job = submit(live, png_bytes(64, 64, seed=10), params={"model": "slow"}).json()
    wait_job(live, job["id"], lambda j: (j["progress"]["tiles_done"] or 0) >= 2)
    answer = httpx.get(f"{live.url}/jobs/{job['id']}/preview", timeout=10)
    httpx.post(f"{live.url}/jobs/{job['id']}/cancel")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    preview = Image.open(io.BytesIO(answer.content))
    assert preview.mode == "RGBA" and preview.size == (256, 256)
    alpha = preview.getchannel("A")
    assert alpha.getextrema() == (0, 255)  # some tiles done, some not
    assert alpha.getpixel((0, 0)) == 255  # tiles run row by row from the top left
    ended = httpx.get(f"{live.url}/jobs/{job['id']}/preview")
    assert ended.status_code == 404 and "canceled" in ended.json()["detail"]


def test_result_is_404_before_it_exists_and_406_for_another_format(
    server: tuple[LiveServer, Any],
) -> None:
    live, _ = server
    job = submit(live, png_bytes(64, 64, seed=11), params={"model": "slow"}).json()
    early = httpx.get(f"{live.url}/jobs/{job['id']}/result")
    assert early.status_code == 404 and "has no result" in early.json()["detail"]
    httpx.post(f"{live.url}/jobs/{job['id']}/cancel")
    done = submit(live, png_bytes(8, 8, seed=12), headers={"Accept": "image/webp"}).json()
    wait_job(live, done["id"], lambda j: j["status"] == "succeeded")
    url = f"{live.url}/jobs/{done['id']}/result"
    assert httpx.get(url, headers={"Accept": "image/png"}).status_code == 406
    webp = httpx.get(url, headers={"Accept": "image/*"})
    assert webp.headers["content-type"] == "image/webp" and webp.content[8:12] == b"WEBP"


def test_delete_removes_the_job_and_its_files(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    job = submit(live, png_bytes(8, 8, seed=13)).json()
    wait_job(live, job["id"], lambda j: j["status"] == "succeeded")
    jobs_dir = live.app.state.context.settings.jobs_dir
    before = sum(1 for _ in (jobs_dir / "files").iterdir())
    assert httpx.delete(f"{live.url}/jobs/{job['id']}").status_code == 204
    assert httpx.get(f"{live.url}/jobs/{job['id']}").status_code == 404
    assert sum(1 for _ in (jobs_dir / "files").iterdir()) == before - 1


def test_unknown_job_is_a_404_with_a_detail(server: tuple[LiveServer, Any]) -> None:
    live, _ = server
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("DELETE", "")):
        answer = httpx.request(method, f"{live.url}/jobs/never{path}")
        assert answer.status_code == 404 and answer.json() == {"detail": "no job 'never'"}


def test_results_expire_after_the_retention_time(models: Path, tmp_path: Path) -> None:
    with jobs_server(models, tmp_path / "jobs", job_retention_seconds=1.0) as (live, _):
        job = submit(live, png_bytes(8, 8)).json()
        wait_job(live, job["id"], lambda j: j["status"] == "succeeded")
        assert httpx.get(f"{live.url}/jobs/{job['id']}/result").status_code == 200
        time.sleep(1.1)
        gone = httpx.get(f"{live.url}/jobs/{job['id']}/result")
        assert gone.status_code == 410 and "UPSCALER_JOB_RETENTION_SECONDS" in gone.json()["detail"]
        expired = wait_job(live, job["id"], lambda j: j["expired"])
        assert expired["result"] is None
        assert not any((tmp_path / "jobs" / "files").iterdir())


def _room_for(image: bytes, side: int) -> int:
    """What a PNG job of a `side` x `side` image holds of the size cap until it has ended."""
    new = NewJob("", None, image, "fast", "standard", "image/png", side, side, 4)
    return len(image) + new.result_bound


def test_a_full_jobs_folder_refuses_new_jobs_with_507(models: Path, tmp_path: Path) -> None:
    image = png_bytes(24, 24)
    cap = _room_for(image, 24) + len(image)
    with jobs_server(models, tmp_path / "jobs", jobs_max_bytes=cap) as (live, _):
        job = submit(live, image).json()
        finished = wait_job(live, job["id"], lambda j: j["status"] == "succeeded")
        assert finished["result"]["bytes"] > 10 * len(image)  # the result fills much of it
        refused = submit(live, image)
        assert refused.status_code == 507 and "UPSCALER_JOBS_MAX_BYTES" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        httpx.delete(f"{live.url}/jobs/{job['id']}")
        assert submit(live, image).status_code == 202


def test_the_size_cap_keeps_room_for_the_results_of_unfinished_jobs(
    models: Path, tmp_path: Path
) -> None:
    """Two small inputs fit, but not room for two results: the second job waits its turn."""
    first, second = png_bytes(24, 24, seed=1), png_bytes(24, 24, seed=2)
    cap = _room_for(first, 24) + len(second)
    with jobs_server(models, tmp_path / "jobs", jobs_max_bytes=cap) as (live, _):
        job = submit(live, first, params={"model": "slow"}).json()
        refused = submit(live, second)
        assert refused.status_code == 507 and "room for its result" in refused.json()["detail"]
        httpx.post(f"{live.url}/jobs/{job['id']}/cancel")
        assert submit(live, second).status_code == 202  # its room is free once it ended


def test_a_key_sees_only_its_own_jobs(models: Path, tmp_path: Path) -> None:
    with jobs_server(models, tmp_path / "jobs", api_keys="alice,bob") as (live, _):
        alice, bob = ({"Authorization": f"Bearer {key}"} for key in ("alice", "bob"))
        assert submit(live, png_bytes()).status_code == 401
        job = submit(live, png_bytes(), headers=alice).json()
        url = f"{live.url}/jobs/{job['id']}"
        assert httpx.get(url, headers=alice).status_code == 200
        assert httpx.get(url, headers=bob).status_code == 404
        assert httpx.post(f"{url}/cancel", headers=bob).status_code == 404
        assert httpx.get(url).status_code == 401
        # The same client-chosen ID is free for another key.
        put = httpx.put(
            f"{live.url}/jobs/shared",
            content=png_bytes(),
            headers={**alice, "Content-Type": "image/png"},
        )
        other = httpx.put(
            f"{live.url}/jobs/shared",
            content=png_bytes(seed=1),
            headers={**bob, "Content-Type": "image/png"},
        )
        assert (put.status_code, other.status_code) == (202, 202)
        stored = (tmp_path / "jobs" / "jobs.sqlite3").read_bytes()
        assert b"alice" not in stored and b"bob" not in stored


def test_without_a_jobs_folder_the_routes_say_why(models: Path) -> None:
    settings = tiny_settings(None, models_dir=models, default_model="fast")
    with LiveServer(create_app(settings)) as live:
        answer = submit(live, png_bytes())
        assert answer.status_code == 404
        assert answer.json()["detail"] == "this service keeps no jobs: UPSCALER_JOBS_DIR is not set"
        assert httpx.get(f"{live.url}/jobs/x").status_code == 404
