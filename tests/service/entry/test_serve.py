"""The service on Ray Serve (`service.entry.serve`): one local Ray session for the module.

Ray is kept small for CI's 2 cores: 2 CPUs declared, no dashboard, a 100 MB object store, the
HTTP proxy on a free loopback port. Two replicas of the upscaler serve tiny models built here;
every answer through the proxy is compared with the single-process app's for the same input
and settings. Skipped where the `ray` extra is not installed.
"""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.core.lifecycle import Phase, Readiness
from service.core.registry import serves_single_file
from service.host import ARENA_ENVIRONMENT, MALLOC_ARENAS
from tests.service.arena_probe import PROBE
from tests.service.helpers import SCALE, build_model, encode, noise_image, wait_until_ready

serve = pytest.importorskip("ray.serve", reason="needs the ray extra: pip install '.[ray]'")
ray = pytest.importorskip("ray")
serve_module = pytest.importorskip("service.entry.serve")
from ray.serve.context import _get_global_client  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

CONFIG_FILE = Path(__file__).parents[3] / "deploy" / "ray" / "serve-cpu.yaml"

#: The replicas' settings, as a config file's `runtime_env: {env_vars: ...}` would set them.
REPLICA_ENV = {
    "UPSCALER_PROVIDERS": "cpu",
    "UPSCALER_ENGINE": "onnxruntime",
    "UPSCALER_TILE_SIZE": "16",
    "UPSCALER_TILE_OVERLAP": "2",
    "UPSCALER_INTRA_OP_THREADS": "1",
    "UPSCALER_ENCODE_THREADS": "1",
    "UPSCALER_MAX_UPLOAD_BYTES": str(256 * 1024),
    "UPSCALER_MAX_INPUT_PIXELS": str(64 * 64),
    "UPSCALER_MAX_CONCURRENCY": "1",
    "UPSCALER_MAX_QUEUE": "2",
    "UPSCALER_RELOAD_INTERVAL_SECONDS": "0",
}
APP_NAME = "upscaler"
#: Longest wait for a deployment (replica processes start in seconds, slower on a busy host).
DEPLOY_TIMEOUT = 180.0
REQUEST_TIMEOUT = 30.0


def _single_process_settings(**models: Any) -> Settings:
    """The same settings as the replicas', for `create_app` in this process."""
    fields = {name.removeprefix("UPSCALER_").lower(): value for name, value in REPLICA_ENV.items()}
    return Settings(**fields, **models)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Folder `first` (models `sharp`, the default, and `soft`) and a lone file `other.onnx`,
    each with its own weights and so its own output."""
    folder = tmp_path_factory.mktemp("ray-models")
    build_model(folder / "sharp.onnx", seed=3)
    build_model(folder / "soft.onnx", seed=4)
    other = build_model(tmp_path_factory.mktemp("ray-other") / "other.onnx", seed=5)
    return SimpleNamespace(folder=folder, other=other)


def _config(user_config: dict[str, Any]) -> Any:
    """deploy/ray/serve-cpu.yaml with this test's settings, 2 small replicas and `user_config`."""
    config = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    del config["http_options"]  # the proxy runs already, on a free port
    application = config["applications"][0]
    application["route_prefix"] = f"/{APP_NAME}"
    # The file's settings (its MALLOC_ARENA_MAX among them), with this test's on top.
    application["runtime_env"]["env_vars"].update(REPLICA_ENV)
    deployment = application["deployments"][0]
    deployment.update(
        num_replicas=2,
        ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=3,
        user_config=user_config,
    )
    return ServeDeploySchema.model_validate(config)


def _deploy(user_config: dict[str, Any]) -> None:
    """What `serve deploy` asks the controller (through the dashboard, not started here): the
    config applied as a whole, so that a change of user_config alone reconfigures the live
    replicas (`serve.run` would replace them)."""
    _get_global_client().deploy_apps(_config(user_config))


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEPLOY_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not after {DEPLOY_TIMEOUT} s: {serve.status()}")
        time.sleep(0.2)


def _running() -> bool:
    application = serve.status().applications.get(APP_NAME)
    return application is not None and application.status == "RUNNING"


@pytest.fixture(scope="module")
def proxy(models: SimpleNamespace) -> Iterator[str]:
    """The base URL of the app `upscaler` (2 replicas serving the folder) through Serve's proxy."""
    port = _free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        log_to_driver=False,
        namespace="upscaler-tests",
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _deploy({"models_dir": str(models.folder), "default_model": "sharp"})
        _wait_until(_running, "the app running")
        yield f"http://127.0.0.1:{port}/{APP_NAME}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def http(proxy: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy, timeout=REQUEST_TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def single_process(models: SimpleNamespace) -> Iterator[Callable[..., Any]]:
    """`reference(method, url, **kwargs)`: the same request to the single-process app serving
    the same folder, and `reference.other(...)` to one serving the lone model."""
    clients: dict[str, TestClient] = {}

    def client_for(key: str, settings: Settings) -> TestClient:
        if key not in clients:
            clients[key] = TestClient(create_app(settings)).__enter__()
            wait_until_ready(clients[key])
        return clients[key]

    folder = _single_process_settings(models_dir=models.folder, default_model="sharp")
    other = _single_process_settings(model_path=models.other)

    def reference(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return client_for("folder", folder).request(method, url, **kwargs)

    def reference_other(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return client_for("other", other).request(method, url, **kwargs)

    reference.other = reference_other  # type: ignore[attr-defined]
    yield reference
    for client in clients.values():
        client.__exit__(None, None, None)


def _upload(pixels_seed: int = 0, width: int = 24, height: int = 20) -> dict[str, Any]:
    image = Image.fromarray(noise_image(height, width, seed=pixels_seed))
    return {"files": {"file": ("in.png", encode(image), "image/png")}}


# --- without Ray: the user_config rules -------------------------------------------------------


def test_settings_for_picks_the_models_and_keeps_the_rest(tmp_path: Path) -> None:
    base = _single_process_settings(model_path=tmp_path / "env.onnx")
    assert serves_single_file(base)
    folder = serve_module.settings_for({"models_dir": str(tmp_path), "default_model": "a"}, base)
    assert (folder.models_dir, folder.default_model) == (tmp_path, "a")
    assert not serves_single_file(folder), "a models_dir config serves the folder"
    assert folder.tile_size == 16 and folder.providers == ["CPUExecutionProvider"]
    some = serve_module.settings_for({"models_dir": str(tmp_path), "models": ["a"]}, base)
    assert some.models == ["a"] and not serves_single_file(some)
    one = serve_module.settings_for({"model_path": str(tmp_path / "x.onnx")}, base)
    assert serves_single_file(one) and one.model_path == tmp_path / "x.onnx"
    assert serve_module.settings_for({}, base) is base
    with pytest.raises(ValueError, match="tile_size"):
        serve_module.settings_for({"tile_size": 32}, base)
    with pytest.raises(ValueError):
        serve_module.settings_for({"default_model": ""}, base)


def test_check_health_raises_without_models_or_after_a_failed_warm_up() -> None:
    check = serve_module.Upscaler.func_or_class.check_health

    def replica(readiness: Readiness) -> SimpleNamespace:
        return SimpleNamespace(_lifecycle=SimpleNamespace(readiness=lambda: readiness))

    with pytest.raises(RuntimeError, match="no model"):
        _await(check(replica(Readiness(Phase.STARTING))))
    with pytest.raises(RuntimeError, match="boom"):
        _await(check(replica(Readiness(Phase.FAILED, "model 'x': boom"))))
    for healthy in (Phase.WARMING_UP, Phase.READY):
        _await(check(replica(Readiness(healthy))))


def _await(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)


def test_a_replica_refuses_jobs_clearly_even_with_a_jobs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store per replica would answer GET /jobs/ID wrongly on the others: no jobs at all.
    monkeypatch.setenv("UPSCALER_JOBS_DIR", str(tmp_path / "jobs"))
    with TestClient(serve_module.build_app()) as client:
        for method, path in (("POST", "/jobs"), ("GET", "/jobs/any"), ("PUT", "/jobs/any")):
            answer = client.request(method, path, content=b"x")
            assert answer.status_code == 404
            assert answer.json() == {"detail": serve_module.RAY_JOBS_DETAIL}
    assert not (tmp_path / "jobs").exists()


# --- through Ray Serve's HTTP proxy -----------------------------------------------------------


def test_two_replicas_serve_the_same_bytes_as_one_process(
    http: httpx.Client, single_process: Callable[..., httpx.Response]
) -> None:
    status = serve.status().applications[APP_NAME]
    assert status.status == "RUNNING"
    assert status.deployments["Upscaler"].replica_states == {"RUNNING": 2}
    for seed in range(4):  # several requests, so both replicas answer some
        request = _upload(seed)
        response = http.post("/upscale", **request)
        expected = single_process("POST", "/upscale", **request)
        assert response.status_code == expected.status_code == 200, response.text
        assert response.content == expected.content
        assert Image.open(io.BytesIO(response.content)).size == (24 * SCALE, 20 * SCALE)
        assert response.headers["x-upscaler-model"] == "sharp"
        assert response.headers["x-request-id"]
    request = _upload(9)
    response = http.post("/upscale", params={"model": "soft"}, **request)
    expected = single_process("POST", "/upscale", params={"model": "soft"}, **request)
    assert response.content == expected.content != http.post("/upscale", **request).content


@pytest.mark.parametrize(
    ("params", "request_kwargs"),
    [
        ({}, {"files": {"file": ("in.png", b"not an image", "image/png")}}),
        ({}, _upload(width=80, height=80)),  # over max_input_pixels: 413
        ({"model": "nope"}, _upload()),  # unknown model: 422
        ({}, {"data": {"other": "field"}}),  # no file field
    ],
    ids=["corrupt", "too-large", "unknown-model", "no-file"],
)
def test_bad_uploads_get_the_same_error_body(
    http: httpx.Client,
    single_process: Callable[..., httpx.Response],
    params: dict[str, str],
    request_kwargs: dict[str, Any],
) -> None:
    response = http.post("/upscale", params=params, **request_kwargs)
    expected = single_process("POST", "/upscale", params=params, **request_kwargs)
    assert 400 <= response.status_code < 500
    assert (response.status_code, response.json()) == (expected.status_code, expected.json())


def test_the_client_request_id_comes_back(http: httpx.Client) -> None:
    response = http.get("/healthz", headers={"X-Request-ID": "client-id-42"})
    # The proxy passes the ID to the app and adds it to the answer too: the same value.
    assert set(response.headers.get_list("x-request-id")) == {"client-id-42"}


def test_the_config_files_are_valid_serve_configs() -> None:
    for name in ("serve-cpu.yaml", "serve-gpu.yaml"):
        config = yaml.safe_load((CONFIG_FILE.parent / name).read_text(encoding="utf-8"))
        (application,) = ServeDeploySchema.model_validate(config).applications
        assert application.import_path == "service.entry.serve:app"
        (deployment,) = application.deployments
        env = application.runtime_env["env_vars"]
        admitted = int(env["UPSCALER_MAX_CONCURRENCY"]) + int(env["UPSCALER_MAX_QUEUE"])
        assert deployment.max_ongoing_requests == admitted, name
        assert set(deployment.user_config) <= set(serve_module.USER_CONFIG_KEYS)
        settings = {key.removeprefix("UPSCALER_").lower() for key in env if "UPSCALER_" in key}
        assert settings <= set(Settings.model_fields)
        # The decorator's own runtime_env gives way to the file's options: the file sets it.
        assert env[ARENA_ENVIRONMENT] == str(MALLOC_ARENAS), name
    # `serve run service.entry.serve:app`, with no file, gets it from the decorator.
    options = serve_module.Upscaler.ray_actor_options
    assert options["runtime_env"]["env_vars"] == {ARENA_ENVIRONMENT: str(MALLOC_ARENAS)}


def test_probes_and_metrics_answer_per_replica(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert [model["name"] for model in ready.json()["models"]] == ["sharp", "soft"]
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "upscaler_model_info" in metrics.text
    assert http.get("/models").json()["default"] == "sharp"


def test_a_new_user_config_swaps_the_model_without_failed_requests(
    http: httpx.Client, single_process: Callable[..., Any], models: SimpleNamespace
) -> None:
    request = _upload(5)
    old = single_process("POST", "/upscale", **request).content
    new = single_process.other("POST", "/upscale", **request).content
    assert old != new
    replicas_before = _replica_ids()
    assert len(replicas_before) == 2
    answers: list[tuple[float, int, bytes]] = []
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            response = http.post("/upscale", **request)
            answers.append((time.perf_counter(), response.status_code, response.content))

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        _deploy({"model_path": str(models.other)})
        # Swapped on both replicas: the last 10 answers (both replicas answer) are new ones.
        _wait_until(
            lambda: len(answers) > 10 and all(body == new for _, _, body in answers[-10:]),
            "the new model on every replica",
        )
        _wait_until(_running, "the app running")
    finally:
        stop.set()
        sender.join(timeout=REQUEST_TIMEOUT)
    assert not sender.is_alive()
    failed = [status for _, status, _ in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the swap: {failed}"
    assert {body for _, _, body in answers} == {old, new}, "answers come from either model"
    first_new = next(at for at, _, body in answers if body == new)
    last_old = max(at for at, _, body in answers if body == old)
    print(
        f"swap: first new answer {first_new - started:.2f} s, last old answer "
        f"{last_old - started:.2f} s after the deploy; {len(answers)} requests, none failed"
    )
    assert _replica_ids() == replicas_before, "the replicas were reconfigured, not replaced"
    ready = http.get("/readyz").json()
    assert [model["name"] for model in ready["models"]] == ["other"]


def test_a_config_whose_model_cannot_load_is_refused_and_the_model_keeps_serving(
    http: httpx.Client, tmp_path: Path
) -> None:
    _deploy({"model_path": str(tmp_path / "missing.onnx")})
    _wait_until(
        lambda: all(
            "missing.onnx" in http.get("/readyz").json()["reload_errors"].get("user_config", "")
            for _ in range(4)
        ),
        "the refusal reported by every replica",
    )
    assert _running()
    request = _upload(6)
    assert http.post("/upscale", **request).status_code == 200
    ready = http.get("/readyz").json()
    assert [model["name"] for model in ready["models"]] == ["other"]


def test_replicas_run_with_two_malloc_arenas() -> None:
    # The probe runs inside each replica's process (Ray's `__ray_call__`), whose own threads
    # would otherwise hold 8 arenas a core before any code of the service runs.
    def probe(_replica: Any, code: str) -> int:
        namespace: dict[str, Any] = {}
        exec(code, namespace)
        return namespace["arenas"]

    replicas = [ray.get_actor(name, namespace="serve") for name in _replica_ids()]
    assert len(replicas) == 2
    counts = ray.get([replica.__ray_call__.remote(probe, PROBE) for replica in replicas])
    assert all(count <= MALLOC_ARENAS for count in counts), counts


def test_the_page_works_under_the_route_prefix(http: httpx.Client, proxy: str) -> None:
    # The app answers at /upscaler/: the page's URLs are relative to it, so they stay there.
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:href|src)="([^"]*static/[^"]+)"', page.text)
    assert len(assets) == 2  # the style sheet and the script
    for asset in assets:
        url = urljoin(f"{proxy}/", asset)
        assert url.startswith(f"{proxy}/static/"), url
        assert httpx.get(url, timeout=REQUEST_TIMEOUT).status_code == 200, url
    bare = httpx.get(proxy, follow_redirects=False, timeout=REQUEST_TIMEOUT)
    assert bare.status_code == 307 and bare.headers["location"] == f"{proxy}/"


def test_upscales_are_counted_under_the_route_prefix(http: httpx.Client) -> None:
    # Each replica counts its own: after a few upscales, some replica's count shows.
    for seed in range(4):
        assert http.post("/upscale", **_upload(seed)).status_code == 200
    counted = re.compile(r'^upscaler_requests_total\{model="[^"]+",status="200"\} [1-9]', re.M)
    _wait_until(lambda: bool(counted.search(http.get("/metrics").text)), "a counted upscale")


def _replica_ids() -> set[str]:
    """The names of the upscaler's replica actors (new ones when replicas are replaced)."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return {actor["name"] for actor in named if "Upscaler" in actor["name"]}
