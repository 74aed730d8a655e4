"""The web page in a real browser against the real service (tiny model, loopback only)."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.service.helpers import encode, noise_image, png_bytes
from tests.service.imaging.test_evidence import drawing
from tests.web.conftest import KEY, PICKER_MODELS
from tests.web.live import TEST_LIMITS, LiveServer

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips, or fails in CI
    expect = None


def rgb_png(width: int, height: int, seed: int = 0) -> bytes:
    return png_bytes(width, height, seed=seed)


def file_payload(name: str, data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}


def item(page: Any, name: str) -> Any:
    return page.locator("#queue .item").filter(has_text=name)


def pick(page: Any, *files: dict[str, Any]) -> None:
    page.set_input_files("#file-input", files=list(files))


def data_transfer(page: Any, *files: tuple[str, bytes, str]) -> Any:
    """A DataTransfer holding `files`, built in the page as a real drop or paste carries them."""
    encoded = [[base64.b64encode(data).decode(), name, mime] for name, data, mime in files]
    return page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [b64, name, type] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type }));
            }
            return transfer;
        }""",
        encoded,
    )


def wait_done(page: Any, name: str) -> Any:
    entry = item(page, name)
    expect(entry).to_have_attribute("data-state", "done")
    return entry


def upscale_requests(page: Any) -> list[Any]:
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/upscale" in r.url else None)
    return requests


def facts(page: Any) -> dict[str, str]:
    """The result's details under the comparison, term by term."""
    return dict(
        page.locator("#facts > div").evaluate_all(
            "rows => rows.map((row) => [row.querySelector('dt').textContent,"
            " row.querySelector('dd').textContent])"
        )
    )


def ready(live: LiveServer) -> dict[str, Any]:
    answer = httpx.get(f"{live.url}/readyz", timeout=10)
    assert answer.status_code == 200
    return answer.json()


def download(page: Any, trigger: Any) -> tuple[str, bytes]:
    with page.expect_download() as info:
        trigger.click()
    result = info.value
    return result.suggested_filename, Path(result.path()).read_bytes()


# ---- served by the app: types, caching, limits ------------------------------------------------


def test_page_and_assets_are_served_with_types_and_caching(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert http.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
        config = re.search(r'id="service-config" type="application/json">(.*?)</script>', page.text)
        assert config is not None
        assert httpx.Response(200, content=config.group(1)).json() == {
            "maxUploadBytes": TEST_LIMITS["max_upload_bytes"],
            "maxInputPixels": TEST_LIMITS["max_input_pixels"],
            "maxEnsembleInputPixels": TEST_LIMITS["max_ensemble_input_pixels"],
        }
        # Relative to the page, so that they hold behind a path prefix too (test_prefix.py).
        assets = ["/" + asset for asset in re.findall(r'(?:href|src)="(static/[^"]+)"', page.text)]
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        assert sorted(a.split("?")[0].rsplit("/", 1)[1] for a in assets) == sorted(types)
        for asset in assets:
            answer = http.get(asset)
            name = asset.split("?")[0].rsplit("/", 1)[1]
            assert answer.status_code == 200
            assert answer.headers["content-type"] == f"{types[name]}; charset=utf-8"
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert answer.headers["x-content-type-options"] == "nosniff"
            stale = http.get(asset.split("?")[0] + "?v=old")
            assert stale.headers["cache-control"] == "no-cache"
        missing = http.get("/static/../main.py")
        assert missing.status_code == 404
        assert http.get("/static/secrets.txt").status_code == 404


# ---- input: picker, drop, paste; before-upload checks ----------------------------------------


def test_picked_file_is_upscaled_compared_and_downloaded(page: Any, server: LiveServer) -> None:
    service = ready(server)
    # The badge names what runs the model: OpenVINO's CPU plugin, or onnxruntime's provider.
    provider = service["providers"][0]
    badge = {"openvino": "openvino:CPU", "onnxruntime": "CPU"}[service["engine"]]
    assert provider.removesuffix("ExecutionProvider") == badge
    page.goto(server.url)
    requests = upscale_requests(page)
    expect(page.locator("#status")).to_have_text(f"Ready · {badge}")
    limits = page.locator("#limits")
    expect(limits).to_contain_text("32 KiB per file")
    expect(limits).to_contain_text("(128×128)")
    expect(limits).to_contain_text("(40×40)")
    # One model: the picker names it but offers no choice.
    model = page.get_by_label("Model")
    expect(model).to_have_value("fast")
    expect(model).to_be_disabled()
    expect(model.locator("option")).to_have_text(["fast: for clean images (default)"])
    pick(page, file_payload("photo.png", rgb_png(24, 16)))
    entry = wait_done(page, "photo.png")
    assert requests[0].url == f"{server.url}/upscale"  # the default runs: no ?model=
    expect(entry.locator(".item-dims")).to_contain_text("24×16 → 96×64")
    expect(entry.locator(".item-status")).to_have_text(re.compile(r"Done in \d:\d\d\.\d"))

    result = page.locator("#result")
    expect(result).to_be_visible()
    expect(page.locator("#result-title")).to_have_text("photo_x4.png")
    details = facts(page)
    assert details["Input"] == "24×16"
    assert details["Output"].startswith("96×64 · PNG · ")
    assert details["Model"] == "fast"
    assert details["Quality"] == "standard"
    assert re.fullmatch(r"[\d.]+ ms", details["Model time"])
    assert re.fullmatch(
        r"decode [\d.]+ ms · model [\d.]+ ms · encode [\d.]+ ms", details["Server timing"]
    )
    assert (
        details["Engine"] == f"{service['engine']} · {service['device']} · {service['precision']}"
    )
    assert details["Provider"] == provider

    # The input is drawn with square pixels over exactly the result's area.
    before, after = page.locator("#before"), page.locator("#after")
    assert before.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"
    assert before.evaluate("img => getComputedStyle(img).imageOrientation") == "from-image"
    assert before.bounding_box() == after.bounding_box()
    stage = page.locator("#stage")
    for label, factor in (("100 %", 1), ("200 %", 2)):
        page.get_by_role("button", name=label, exact=True).click()
        expect(page.get_by_role("button", name=label, exact=True)).to_have_attribute(
            "aria-pressed", "true"
        )
        box = stage.bounding_box()
        assert (round(box["width"]), round(box["height"])) == (96 * factor, 64 * factor)
        assert before.bounding_box() == after.bounding_box()
    page.get_by_role("button", name="Fit", exact=True).click()

    name, data = download(page, page.locator("#download"))
    assert name == "photo_x4.png"
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(data)).size == (96, 64)
    name, _ = download(page, entry.get_by_role("link", name="Download photo.png"))
    assert name == "photo_x4.png"


def test_files_dropped_anywhere_queue_one_after_another(page: Any, server: LiveServer) -> None:
    page.goto(server.url)
    requests = upscale_requests(page)
    sizes: list[str] = []
    page.on(
        "response",
        lambda r: sizes.append(r.headers["x-input-size"]) if "/upscale" in r.url else None,
    )
    transfer = data_transfer(
        page,
        ("first.png", rgb_png(20, 12, seed=1), "image/png"),
        ("second.png", rgb_png(12, 20, seed=2), "image/png"),
    )
    target = page.locator("#queue-title")  # not the drop zone: anywhere on the page
    target.dispatch_event("dragenter", {"dataTransfer": transfer})
    expect(page.locator("#drop-overlay")).to_be_visible()
    target.dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator("#drop-overlay")).to_be_hidden()
    wait_done(page, "first.png")
    wait_done(page, "second.png")
    expect(item(page, "second.png").locator(".item-dims")).to_contain_text("12×20 → 48×80")
    expect(page.locator("#result-title")).to_have_text("second_x4.png")
    # One request at a time, in the order they were dropped.
    assert [r.method for r in requests] == ["POST", "POST"]
    assert sizes == ["20x12", "12x20"]


def test_pasted_image_is_upscaled(page: Any, server: LiveServer) -> None:
    page.goto(server.url)
    transfer = data_transfer(page, ("image.png", rgb_png(10, 10, seed=4), "image/png"))
    page.evaluate(
        """(transfer) => document.dispatchEvent(new ClipboardEvent("paste", {
            clipboardData: transfer, bubbles: true, cancelable: true }))""",
        transfer,
    )
    wait_done(page, "pasted-1.png")
    name, data = download(page, page.locator("#download"))
    assert name == "pasted-1_x4.png"
    assert Image.open(io.BytesIO(data)).size == (40, 40)


def test_files_over_the_limits_are_refused_before_upload(page: Any, server: LiveServer) -> None:
    page.goto(server.url)
    requests = upscale_requests(page)
    noise = np.random.default_rng(0).integers(0, 256, (110, 110, 3), dtype=np.uint8)
    heavy = encode(Image.fromarray(noise))  # incompressible: over 32 KiB
    assert len(heavy) > TEST_LIMITS["max_upload_bytes"]
    pick(
        page,
        file_payload(
            "wide.png", encode(Image.new("RGB", (200, 100), "teal"))
        ),  # 20000 pixels > 128²
        file_payload("heavy.png", heavy),
    )
    expect(item(page, "wide.png")).to_have_attribute("data-state", "rejected")
    expect(item(page, "wide.png")).to_contain_text("Too many pixels: 200×100 is 0.02 MP")
    expect(item(page, "heavy.png")).to_contain_text(re.compile(r"Too large: 3\d KiB"))
    expect(item(page, "heavy.png").get_by_role("alert")).to_contain_text("up to 32 KiB")

    # quality=max has its own, smaller limit; going back to standard lets the file through.
    page.get_by_role("radio", name="Max").click()
    pick(page, file_payload("square.png", rgb_png(48, 48)))
    expect(item(page, "square.png")).to_contain_text("Too large for quality Max")
    assert requests == []
    page.get_by_role("radio", name="Standard").click()
    wait_done(page, "square.png")
    assert len(requests) == 1


def test_service_errors_are_shown_as_their_detail(page: Any, server: LiveServer) -> None:
    not_image = b"these are not the pixels you are looking for\n" * 10
    big_tiff = encode(
        Image.new("L", (200, 200)), "TIFF", compression="tiff_lzw"
    )  # Chromium cannot preview TIFF
    details = {}
    for name, data, mime in (("notes.png", not_image, "image/png"), ("scan.tif", big_tiff, "")):
        answer = httpx.post(
            f"{server.url}/upscale",
            content=data,
            headers={"Content-Type": mime or "application/octet-stream"},
        )
        details[name] = (answer.status_code, answer.json()["detail"])
    assert details["notes.png"][0] == 415
    assert details["scan.tif"][0] == 413

    page.goto(server.url)
    pick(page, file_payload("notes.png", not_image), file_payload("scan.tif", big_tiff, ""))
    for name, (status, detail) in details.items():
        entry = item(page, name)
        expect(entry).to_have_attribute("data-state", "failed")
        expect(entry.get_by_role("alert")).to_have_text(f"{status}: {detail}")
    expect(item(page, "scan.tif").locator(".item-dims")).to_contain_text("size unknown")


def test_a_key_is_asked_for_after_a_401_and_remembered(page: Any, keyed_server: LiveServer) -> None:
    page.goto(keyed_server.url)
    pick(page, file_payload("locked.png", rgb_png(12, 10)))
    entry = item(page, "locked.png")
    expect(entry).to_have_attribute("data-state", "failed")
    expect(entry.get_by_role("alert")).to_contain_text("401")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#api-key", KEY)
    page.get_by_role("button", name="Save key").click()
    entry.get_by_role("button", name="Retry").click()
    wait_done(page, "locked.png")
    page.reload()  # the key is remembered in this browser
    requests = upscale_requests(page)
    pick(page, file_payload("again.png", rgb_png(12, 10, seed=1)))
    wait_done(page, "again.png")
    assert requests[-1].headers["authorization"] == f"Bearer {KEY}"


# ---- controls ----------------------------------------------------------------------------------


def test_quality_and_format_are_sent_and_remembered(page: Any, server: LiveServer) -> None:
    page.goto(server.url)
    requests = upscale_requests(page)
    page.get_by_role("radio", name="Max").click()
    page.get_by_role("radio", name="WebP").click()
    page.reload()
    expect(page.locator("input[name=quality][value=max]")).to_be_checked()
    expect(page.locator("input[name=format][value=webp]")).to_be_checked()
    pick(page, file_payload("photo.png", rgb_png(16, 16)))
    wait_done(page, "photo.png")
    name, data = download(page, page.locator("#download"))
    assert name == "photo_x4.webp"
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert requests[0].headers["accept"] == "image/webp"
    assert requests[0].url.endswith("/upscale?quality=max")
    expect(page.locator("#facts")).to_contain_text("max")

    page.get_by_role("radio", name="Standard").click()
    page.get_by_role("radio", name="JPEG").click()
    pick(page, file_payload("shot.jpeg", encode(Image.fromarray(noise_image(8, 8)), "JPEG")))
    wait_done(page, "shot.jpeg")
    name, data = download(page, page.locator("#download"))
    assert name == "shot_x4.jpg"
    assert data.startswith(b"\xff\xd8") and Image.open(io.BytesIO(data)).size == (32, 32)


def test_model_picker_offers_auto_then_each_model_and_remembers_the_choice(
    page: Any, models_server: LiveServer
) -> None:
    listed = httpx.get(f"{models_server.url}/models", timeout=10).json()
    assert listed["default"] == "auto"  # a clean and a robust model: the service chooses
    assert [model["name"] for model in listed["models"]] == ["sharp", "gentle"]
    url = models_server.url
    page.goto(url)
    requests = upscale_requests(page)
    model, about = page.get_by_label("Model"), page.locator("#model-about")
    expect(model).to_be_enabled()
    expect(model.locator("option")).to_have_text(
        [
            "Automatic (default)",
            "sharp: for clean images",
            "gentle: for JPEG, noisy or blurred images",
        ]
    )
    expect(model).to_have_value("auto")  # the default, preselected
    expect(about).to_have_text(listed["auto"]["description"])
    pick(page, file_payload("first.png", rgb_png(8, 8)))
    wait_done(page, "first.png")
    # Random pixels read as noise: the robust model ran, and the page says why.
    assert facts(page)["Model"] == "gentle"
    assert facts(page)["Chosen because"].startswith("noise")

    model.select_option("sharp")
    expect(about).to_have_text(PICKER_MODELS["sharp"]["description"])
    pick(page, file_payload("second.png", rgb_png(8, 8, seed=1)))
    wait_done(page, "second.png")
    assert facts(page)["Model"] == "sharp" and "Chosen because" not in facts(page)
    # Only a real choice is sent; the service counts each request under the model that ran it.
    assert [r.url for r in requests] == [f"{url}/upscale", f"{url}/upscale?model=sharp"]
    for name in PICKER_MODELS:
        assert models_server.metric("upscaler_requests_total", model=name, status="200") == 1

    page.reload()
    expect(model).to_have_value("sharp")
    # A remembered model the service no longer has falls back to the default.
    page.evaluate(
        """() => localStorage.setItem("edsr-upscaler.settings",
            JSON.stringify({ quality: "standard", format: "png", model: "retired" }))"""
    )
    page.reload()
    requests = upscale_requests(page)
    expect(model).to_have_value("auto")
    expect(model.locator("option")).to_have_count(3)
    pick(page, file_payload("third.png", rgb_png(8, 8, seed=2)))
    wait_done(page, "third.png")
    assert [r.url for r in requests] == [f"{url}/upscale"]
    assert facts(page)["Model"] == "gentle"


def test_a_drawing_is_explained_as_one(page: Any, models_server: LiveServer) -> None:
    page.goto(models_server.url)
    pick(page, file_payload("diagram.png", encode(Image.fromarray(drawing()), "PNG")))
    wait_done(page, "diagram.png")
    assert facts(page)["Model"] == "gentle"
    assert facts(page)["Chosen because"].startswith("pixel-sharp edges")


def test_a_drawing_saved_as_a_high_quality_jpeg_is_explained(
    page: Any, models_server: LiveServer
) -> None:
    page.goto(models_server.url)
    jpeg = encode(Image.fromarray(drawing()), "JPEG", quality=95)
    pick(page, file_payload("diagram.jpg", jpeg, "image/jpeg"))
    wait_done(page, "diagram.jpg")
    assert facts(page)["Model"] == "gentle"
    assert facts(page)["Chosen because"].startswith("no camera noise at all")


def test_model_picker_waits_for_the_list_and_hides_without_one(
    page: Any, models_server: LiveServer
) -> None:
    # Before the models are loaded GET /models is a 503: the page asks again after Retry-After.
    answers: list[int] = []

    def starting_then_ready(route: Any) -> None:
        if not answers:
            answers.append(503)
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "starting"})
        else:
            answers.append(200)
            route.continue_()

    page.route("**/models", starting_then_ready)
    page.goto(models_server.url)
    expect(page.get_by_label("Model")).to_have_value("auto")
    assert answers == [503, 200]

    # A service without a model list (an older one, or a proxy hiding it): no picker, no ?model=.
    page.unroute("**/models")
    page.route("**/models", lambda route: route.fulfill(status=404, json={"detail": "Not Found"}))
    page.evaluate(
        """() => localStorage.setItem("edsr-upscaler.settings",
            JSON.stringify({ quality: "standard", format: "png", model: "gentle" }))"""
    )
    page.reload()
    requests = upscale_requests(page)
    expect(page.locator("#status")).to_contain_text("Ready")
    expect(page.locator("#model-field")).to_be_hidden()
    pick(page, file_payload("photo.png", rgb_png(8, 8)))
    wait_done(page, "photo.png")
    assert [r.url for r in requests] == [f"{models_server.url}/upscale"]


# ---- the comparison ------------------------------------------------------------------------------


def test_split_moves_with_keyboard_and_mouse(page: Any, server: LiveServer) -> None:
    page.goto(server.url)
    pick(page, file_payload("photo.png", rgb_png(32, 16)))
    wait_done(page, "photo.png")
    split = page.get_by_role("slider", name=re.compile("Before and after split"))
    expect(split).to_have_attribute("aria-valuenow", "50")
    split.focus()
    page.keyboard.press("ArrowLeft")
    expect(split).to_have_attribute("aria-valuenow", "49")
    page.keyboard.press("Shift+ArrowLeft")
    expect(split).to_have_attribute("aria-valuenow", "39")
    page.keyboard.press("End")
    expect(split).to_have_attribute("aria-valuenow", "100")
    page.keyboard.press("Home")
    expect(split).to_have_attribute("aria-valuetext", "0 % input, 100 % result")

    box = page.locator("#stage").bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.8, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.25, middle, steps=5)
    page.mouse.up()
    value = int(split.get_attribute("aria-valuenow"))
    assert abs(value - 25) <= 1
    clip = page.locator("#after").evaluate("img => img.style.clipPath")
    assert clip == f"inset(0px 0px 0px {value}%)"


def test_split_follows_touch(browser: Any, server: LiveServer) -> None:
    context = browser.new_context(has_touch=True, viewport={"width": 800, "height": 900})
    try:
        page = context.new_page()
        page.goto(server.url)
        pick(page, file_payload("photo.png", rgb_png(32, 16)))
        wait_done(page, "photo.png")
        page.locator("#stage").scroll_into_view_if_needed()
        box = page.locator("#stage").bounding_box()
        page.touchscreen.tap(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2)
        value = int(page.locator("#split").get_attribute("aria-valuenow"))
        assert abs(value - 70) <= 1
    finally:
        context.close()


def test_exif_rotated_photo_is_measured_and_compared_upright(page: Any, server: LiveServer) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24x16, shown rotated a quarter turn: 16x24
    photo = encode(Image.fromarray(noise_image(16, 24)), "JPEG", exif=exif)
    page.goto(server.url)
    pick(page, file_payload("phone.jpg", photo, "image/jpeg"))
    entry = wait_done(page, "phone.jpg")
    expect(entry.locator(".item-dims")).to_contain_text("16×24 → 64×96")
    expect(page.locator("#facts")).to_contain_text("16×24")
    natural = page.locator("#before").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [16, 24]
    before, after = page.locator("#before"), page.locator("#after")
    assert before.bounding_box() == after.bounding_box()


def test_transparency_is_kept_on_a_checkerboard(page: Any, server: LiveServer) -> None:
    image = Image.fromarray(noise_image(12, 12)).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((12, 12)))
    page.goto(server.url)
    pick(page, file_payload("logo.png", encode(image)))
    wait_done(page, "logo.png")
    background = page.locator("#stage").evaluate("s => getComputedStyle(s).backgroundImage")
    assert "conic-gradient" in background
    _, data = download(page, page.locator("#download"))
    result = Image.open(io.BytesIO(data))
    assert result.mode == "RGBA" and result.size == (48, 48)
    assert result.getextrema()[3][0] < 50  # the transparent corner stayed transparent


# ---- while it runs: Stop, 503 ------------------------------------------------------------------


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_stop_aborts_the_request_and_the_service_drops_the_work(
    page: Any, slow_server: tuple[LiveServer, Any]
) -> None:
    live, slow = slow_server
    abandoned = live.metric("upscaler_requests_total", model="slow", status="499")
    page.goto(live.url)
    calls = slow.calls
    pick(page, file_payload("big.png", rgb_png(64, 64)))  # about 36 tiles: 7 s of model time
    entry = item(page, "big.png")
    status = entry.locator(".item-status")
    expect(status).to_contain_text("Upscaling")
    expect(status).to_have_text(re.compile(r"Upscaling · \d:\d\d\.\d"))
    assert entry.locator("progress").evaluate("bar => bar.hasAttribute('value')") is False
    _wait_for(lambda: slow.calls > calls, 10, "the first model call")
    entry.get_by_role("button", name="Stop").click()
    expect(entry).to_have_attribute("data-state", "stopped")
    _wait_for(
        lambda: live.metric("upscaler_requests_total", model="slow", status="499") == abandoned + 1,
        5,
        "the service to record the abandoned request",
    )
    ran = slow.calls - calls
    time.sleep(1.0)
    assert slow.calls - calls == ran, "model calls went on after the client left"
    assert ran < 15, f"{ran} of about 36 tiles ran before the service stopped"


def test_busy_service_is_retried_after_a_visible_countdown(
    page: Any, slow_server: tuple[LiveServer, Any]
) -> None:
    live, slow = slow_server
    busy = live.metric("upscaler_requests_total", model="slow", status="503")
    calls = slow.calls
    answers: list[int] = []

    def occupy() -> None:  # holds the only slot for a few seconds
        answer = httpx.post(
            f"{live.url}/upscale",
            content=rgb_png(40, 40),
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        answers.append(answer.status_code)

    blocker = threading.Thread(target=occupy)
    blocker.start()
    try:
        _wait_for(lambda: slow.calls > calls, 10, "the blocking request to start")
        page.goto(live.url)
        pick(page, file_payload("small.png", rgb_png(8, 8)))
        entry = item(page, "small.png")
        expect(entry.locator(".item-status")).to_contain_text(
            re.compile(r"Service busy \(.+\); retrying in 1 s")
        )
        expect(entry).to_have_attribute("data-state", "done", timeout=30_000)
    finally:
        blocker.join(timeout=30)
    assert answers == [200]
    assert live.metric("upscaler_requests_total", model="slow", status="503") > busy
