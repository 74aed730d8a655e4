"""The `upscale` command line against the real service, a stub that answers 503, and --local."""

from __future__ import annotations

import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from service.api.app import create_app
from service.entry import client
from service.host import ARENA_ENVIRONMENT, MALLOC_ARENAS
from tests.service.arena_probe import arenas_after
from tests.service.entry.conftest import KEY
from tests.service.helpers import encode, noise_image, png_bytes
from tests.service.imaging.test_evidence import scene
from tests.web.live import LiveServer, tiny_settings

ROOT = Path(__file__).resolve().parents[3]
GPS = {1: "N", 2: (48.0, 51.0, 24.0)}

pytestmark = pytest.mark.usefixtures("bounded")


def size_of(path_or_bytes: Path | bytes) -> tuple[int, int]:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return Image.open(io.BytesIO(data)).size


def run(*argv: str, stdin: bytes = b"") -> tuple[int, bytes]:
    out = io.BytesIO()
    status = client.main(list(argv), stdin=io.BytesIO(stdin), stdout=out)
    return status, out.getvalue()


# ---- planning: names and folders -----------------------------------------------------------


def test_outputs_are_named_beside_or_under_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/a.PNG", "in/sub/b.jpeg", "in/a_x4.png", "single.webp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "in" / "readme.md").write_text("skip me")
    inside = tmp_path / "in" / "out"
    inside.mkdir()
    (inside / "old_x4.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)

    jobs, problems = client.plan_jobs(["in", "single.webp", "missing.png"], "in/out", "jpeg")
    assert {(j.label, str(j.target)) for j in jobs} == {
        ("in/a.PNG", "in/out/a_x4.jpg"),
        ("in/sub/b.jpeg", "in/out/sub/b_x4.jpg"),
        ("in/a_x4.png", "in/out/a_x4_x4.jpg"),  # not the result of a jpeg run
        ("single.webp", "in/out/single_x4.jpg"),
    }
    assert problems == [("missing.png", "no such file or folder")]

    # Beside the inputs: a second run does not take the first run's results as inputs.
    jobs, _ = client.plan_jobs(["in"], None, "png")
    assert {(j.label, str(j.target)) for j in jobs} == {
        ("in/a.PNG", "in/a_x4.png"),
        ("in/sub/b.jpeg", "in/sub/b_x4.png"),
        ("in/out/old_x4.png", "in/out/old_x4_x4.png"),  # no input of this run makes it
    }
    # One file and an OUT that is not a folder: OUT is the file.
    [job] = client.plan_jobs(["single.webp"], "big.png", "png")[0]
    assert job.target == Path("big.png")
    [job] = client.plan_jobs(["-"], None, "png")[0]
    assert (job.source, job.target) == (None, None)
    with pytest.raises(client.UsageError):
        client.plan_jobs(["single.webp", "in/a.PNG"], "-", "png")


# ---- against the real service ---------------------------------------------------------------


def test_folder_with_a_bad_file_keeps_going_and_fails_at_the_end(
    service_url: str, photos: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = photos({"a.png": (8, 6), "sub/b.png": (5, 7)})
    out = tmp_path / "out"
    status, _ = run(str(folder), "-o", str(out), "--url", service_url, "--jobs", "2")
    assert status == 1
    assert size_of(out / "a_x4.png") == (32, 24)
    assert size_of(out / "sub" / "b_x4.png") == (20, 28)
    assert not (out / "bad_x4.png").exists()
    assert sorted(p.name for p in out.rglob("*")) == ["a_x4.png", "b_x4.png", "sub"]
    err = capsys.readouterr().err
    assert "bad.png: 415: the upload is not an image" in err
    assert "upscale: 2 upscaled (tiny 2), 0 skipped (existing), 1 failed:" in err

    # Existing outputs are skipped, unless --overwrite.
    before = (out / "a_x4.png").stat().st_mtime_ns
    status, _ = run(str(folder), "-o", str(out), "--url", service_url)
    assert status == 1
    assert "0 upscaled, 2 skipped (existing), 1 failed" in capsys.readouterr().err
    assert (out / "a_x4.png").stat().st_mtime_ns == before
    status, _ = run(str(folder / "a.png"), "-o", str(out / "a_x4.png"), "--url", service_url,
                    "--overwrite", "--format", "webp")  # fmt: skip
    assert status == 0
    assert (out / "a_x4.png").read_bytes()[8:12] == b"WEBP"  # the name given with -o wins


def test_stdin_to_stdout(service_url: str) -> None:
    status, out = run("-", "--url", service_url, "--format", "jpeg", stdin=png_bytes(6, 5))
    assert status == 0
    assert out.startswith(b"\xff\xd8") and size_of(out) == (24, 20)


def test_the_api_key_comes_from_the_environment(
    keyed_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UPSCALER_API_KEY", raising=False)
    assert run("-", "--url", keyed_service_url, stdin=png_bytes(6, 5))[0] == 1  # 401
    monkeypatch.setenv("UPSCALER_API_KEY", KEY)
    status, out = run("-", "--url", keyed_service_url, stdin=png_bytes(6, 5))
    assert status == 0 and size_of(out) == (24, 20)


def test_stdout_of_the_console_script(service_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(7, 3))
    done = subprocess.run(
        [sys.executable, "-m", "service.entry.client", str(photo), "-o", "-", "--url", service_url],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert size_of(done.stdout) == (28, 12)
    assert b"1 upscaled" in done.stderr


def test_exit_codes(service_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(4, 4))
    assert run(str(photo), "--url", service_url, "--quality", "max")[0] == 0
    assert run("-", "-", "--url", service_url)[0] == 2
    assert run(str(tmp_path / "nothing.png"), "--url", service_url)[0] == 1
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    started = time.monotonic()
    copy = photo.with_name("copy.png")
    copy.write_bytes(photo.read_bytes())
    assert run(str(photo), str(copy), "--url", dead, "--retries", "2", "--overwrite")[0] == 1
    assert time.monotonic() - started < 5  # 0.5 + 1 s of back-off, then the second fails at once
    assert "cannot reach the service" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        client.main(["--jobs", "0", str(photo)])
    assert usage.value.code == 2


def test_a_model_the_service_does_not_have_is_refused_before_any_image_is_sent(
    service_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png_bytes(4, 4))
    assert run(str(tmp_path), "--url", service_url, "--model", "nope")[0] == 2
    err = capsys.readouterr().err
    assert "has no model 'nope' (it has: " in err
    assert "failed" not in err  # no image was tried
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_a_model_name_is_not_refused_when_the_service_does_not_list_its_models(
    keyed_service_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("UPSCALER_API_KEY", raising=False)  # GET /models: 401
    assert run("-", "--url", keyed_service_url, "--model", "nope", stdin=png_bytes(6, 5))[0] == 1
    assert "401" in capsys.readouterr().err  # the image was tried, and the service said why


@pytest.mark.parametrize("listing", [b'{"detail": "no"}', b"[]", b'{"models": [{}]}', b"<html>"])
def test_a_listing_that_is_not_the_services_is_no_reason_to_refuse(listing: bytes) -> None:
    import httpx

    upscaler = client.HttpUpscaler(
        "http://127.0.0.1:9", fmt="png", quality="standard", model="nope", retries=0, timeout=5
    )
    upscaler.client = httpx.Client(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=listing))
    )
    upscaler.check_model()  # no UsageError, no other exception
    upscaler.close()


# ---- 503 and connection errors are retried -----------------------------------------------------


@pytest.fixture
def flaky_service() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A stub: drops the first connection, answers 503 (Retry-After: 1), then an image."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            if len(seen) == 1:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if len(seen) == 2:
                body = b'{"detail": "all 1 upscale slots are busy"}'
                self.send_response(503)
                self.send_header("Retry-After", "1")
            else:
                body = png_bytes(8, 8)
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_connection_error_and_503_are_retried(
    flaky_service: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    url, seen = flaky_service
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(png_bytes(2, 2))
    started = time.monotonic()
    status, _ = run(str(photo), "--url", url, "--quality", "max", "--model", "edsr_x4",
                    "--format", "webp")  # fmt: skip
    assert status == 0
    assert time.monotonic() - started >= 1.0  # waited for Retry-After
    assert len(seen) == 3
    assert seen[-1]["path"] == "/upscale?quality=max&model=edsr_x4"
    assert seen[-1]["accept"] == "image/webp"
    assert seen[-1]["content-type"] == "image/jpeg"
    assert (tmp_path / "photo_x4.webp").is_file()


# ---- --local: the same upscale in this process --------------------------------------------------


def test_local_folder_with_a_bad_file(
    local_env: Path, photos: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    folder = photos({"a.png": (8, 6), "big.png": (200, 100)})
    status, _ = run(str(folder), "--local", "--model", str(local_env))
    assert status == 1
    assert size_of(folder / "a_x4.png") == (32, 24)
    err = capsys.readouterr().err
    assert "bad.png: the upload is not an image" in err
    assert "big.png: " in err and "pixels" in err  # the service's own limit
    assert "1 upscaled (tiny 1), 0 skipped (existing), 2 failed" in err
    status, out = run("-", "--local", "--model", str(local_env), stdin=png_bytes(3, 2))
    assert status == 0 and size_of(out) == (12, 8)


def test_local_without_a_model_says_how_to_name_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository: no models/ folder here
    monkeypatch.delenv("UPSCALER_MODEL_PATH", raising=False)
    (tmp_path / "photo.png").write_bytes(png_bytes(2, 2))
    status, _ = run("photo.png", "--local")
    assert status == 2
    err = capsys.readouterr().err
    assert "no models folder at models" in err and "--model FILE.onnx" in err


def test_local_mode_never_imports_fastapi(local_env: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(5, 5))
    code = (
        "import sys\n"
        "from service.entry.client import main\n"
        f"status = main([{str(photo)!r}, '--local', '--model', {str(local_env)!r}])\n"
        "assert status == 0, status\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn'))\n"
        "assert not loaded, loaded\n"
        "assert 'onnxruntime' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, cwd=ROOT, env=os.environ
    )
    assert done.returncode == 0, done.stderr.decode()
    assert size_of(tmp_path / "photo_x4.png") == (20, 20)


def test_local_mode_bounds_its_malloc_arenas(local_env: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(5, 5))
    setup = (
        "from service.entry.client import main\n"
        f"assert main([{str(photo)!r}, '--local', '--model', {str(local_env)!r}]) == 0"
    )
    env = {key: value for key, value in os.environ.items() if key != ARENA_ENVIRONMENT}
    assert arenas_after(setup, env) <= MALLOC_ARENAS


def test_each_image_sent_is_announced_with_the_services_estimate(
    service_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(8, 6))
    status, _ = run(str(photo), "--url", service_url, "--progress", "--overwrite")
    assert status == 0
    err = capsys.readouterr().err
    assert f"upscale: {photo}: 8x6, about 1 s of model time" in err
    run(str(photo), "--url", service_url, "--no-progress", "--overwrite")
    assert "model time" not in capsys.readouterr().err, "told only to a person watching"


def _geotagged(tmp_path: Path) -> Path:
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = GPS
    photo = tmp_path / "geo.jpg"
    photo.write_bytes(encode(Image.fromarray(noise_image(6, 8)), "JPEG", exif=exif.tobytes()))
    return photo


def test_metadata_keep_keeps_the_photos_exif(service_url: str, tmp_path: Path) -> None:
    photo = _geotagged(tmp_path)
    assert run(str(photo), "--url", service_url)[0] == 0
    assert not Image.open(tmp_path / "geo_x4.png").getexif()
    assert run(str(photo), "--url", service_url, "--metadata", "keep", "--overwrite")[0] == 0
    kept = Image.open(tmp_path / "geo_x4.png").getexif()
    assert kept.get_ifd(ExifTags.IFD.GPSInfo) == GPS


def test_local_metadata_keep_keeps_the_photos_exif(local_env: Path, tmp_path: Path) -> None:
    photo = _geotagged(tmp_path)
    assert run(str(photo), "--local", "--model", str(local_env), "--metadata", "keep")[0] == 0
    kept = Image.open(tmp_path / "geo_x4.png").getexif()
    assert kept.get_ifd(ExifTags.IFD.GPSInfo) == GPS


# ---- which model ran: `auto`, over HTTP and with --local -------------------------------------


def _auto_inputs(folder: Path) -> Path:
    """A clean PNG and the same picture as a JPEG of quality 50 (64x64: the test limits)."""
    lr = Image.fromarray(scene(256)).resize((64, 64), Image.Resampling.BICUBIC)
    folder.mkdir()
    lr.save(folder / "clean.png")
    lr.save(folder / "web.jpg", quality=50)
    return folder


def test_the_summary_says_which_model_auto_chose_and_why(
    models_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = tiny_settings(None, models_dir=models_folder, default_model="sharp")
    inputs = _auto_inputs(tmp_path / "in")
    with LiveServer(create_app(settings)) as live:
        status, _ = run(str(inputs), "--url", live.url, "--job-threshold", "100")
    assert status == 0
    err = capsys.readouterr().err
    # `soft` is the folder's robust model, `sharp` its clean one (a q 50 JPEG may read as
    # blurred too: "JPEG + blur").
    assert "upscale: 2 upscaled (" in err and "soft 1: JPEG" in err and "sharp 1: clean 1" in err


def test_local_chooses_from_the_models_folder_as_the_service_does(
    local_env: Path,
    models_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("UPSCALER_MODELS_DIR", str(models_folder))
    monkeypatch.setenv("UPSCALER_DEFAULT_MODEL", "sharp")
    monkeypatch.delenv("UPSCALER_MODEL_PATH", raising=False)
    inputs = _auto_inputs(tmp_path / "in")
    assert run(str(inputs), "--local")[0] == 0
    err = capsys.readouterr().err
    assert "soft 1: JPEG" in err and "sharp 1: clean 1" in err


def test_two_inputs_with_one_output_name_are_not_silently_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    for name in ("x.png", "x.jpg", "y.png"):
        (tmp_path / "in" / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    jobs, problems = client.plan_jobs(["in"], "out", "png")
    assert sorted(job.label for job in jobs) == ["in/x.jpg", "in/y.png"]
    ((label, message),) = problems
    assert label == "in/x.png" and "x_x4.png" in message and "in/x.jpg" in message
