"""Ray section: the service on Ray Serve (`service.entry.serve`) against the single process.

Three targets run side by side on this machine with the same settings and model: the service
under uvicorn (`benchmarks.server.running_service`), and Ray Serve apps of 1 and of 2 replicas
behind Serve's HTTP proxy (deploy/ray/serve-cpu.yaml, with this run's settings as the replicas'
`UPSCALER_*` variables). The same small upload is sent to each in turn, round after round, at
each client concurrency, so a drifting machine affects them alike. Reported per target and
concurrency: requests per second, p50/p95 latency and status counts; then the swap time of a
`user_config` change (another model file) on the 2-replica app under a steady stream of
requests, and how many of those requests failed.

Optional (`--sections ray`): needs the `ray` extra, and is not part of the default run. Ray is
started for the section alone (as many CPUs as this machine has, no dashboard, a small object
store) and shut down after it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.context import BenchContext
from benchmarks.images import png_file
from benchmarks.measure import percentile
from benchmarks.server import (
    REPO_ROOT,
    drive,
    free_port,
    running_service,
    settings_environment,
    status_counts,
)

CONFIG_FILE = REPO_ROOT / "deploy" / "ray" / "serve-cpu.yaml"
#: LR side of the upload: small, so the figures show the proxy's cost, not the model's.
INPUT_SIDE = 48
CONCURRENCIES = (1, 2)
#: Requests per target and concurrency in each round.
REQUESTS = 12
ROUNDS = 2
TIMEOUT_S = 300.0


def _config(env: dict[str, str], model: Path, replicas: dict[str, int], cpus: float) -> Any:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    template = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    applications = []
    for name, count in replicas.items():
        application = yaml.safe_load(yaml.safe_dump(template["applications"][0]))
        application.update(name=name, route_prefix=f"/{name}")
        application["runtime_env"]["env_vars"] = env
        application["deployments"][0].update(
            num_replicas=count,
            ray_actor_options={"num_cpus": cpus},
            user_config={"model_path": str(model)},
        )
        applications.append(application)
    return ServeDeploySchema.model_validate({"applications": applications})


def _wait_running(names: list[str]) -> None:
    from ray import serve

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        applications = serve.status().applications
        if all(name in applications and applications[name].status == "RUNNING" for name in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve apps not running after {TIMEOUT_S} s: {serve.status()}")
        time.sleep(0.2)


def _cell(url: str, body: bytes, concurrency: int) -> dict[str, Any]:
    replies, wall = drive(url, body, concurrency=concurrency, requests=REQUESTS)
    return {"replies": replies, "wall_s": wall}


def _summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    replies = [reply for cell in cells for reply in cell["replies"]]
    wall = sum(cell["wall_s"] for cell in cells)
    seconds = [reply.seconds for reply in replies if reply.status == 200]
    ok = len(seconds)
    return {
        "requests": len(replies),
        "requests_per_s": round(ok / wall, 2) if wall else None,
        "p50_ms": round(percentile(seconds, 50) * 1000, 1) if seconds else None,
        "p95_ms": round(percentile(seconds, 95) * 1000, 1) if seconds else None,
        "status": status_counts(replies),
    }


def _measure_swap(url: str, body: bytes, new_name: str, deploy: Any) -> dict[str, Any]:
    """Deploys the new config while a client keeps sending; seconds until every replica
    answers with the new model, and the failed requests meanwhile."""
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def keep_sending() -> None:
        with httpx.Client(timeout=TIMEOUT_S) as session:
            while not stop.is_set():
                response = session.post(
                    f"{url}/upscale", content=body, headers={"Content-Type": "image/png"}
                )
                name = response.headers.get("x-upscaler-model", "")
                answers.append((time.perf_counter(), response.status_code, name))

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    time.sleep(1.0)
    started = time.perf_counter()
    deploy()
    deadline = started + TIMEOUT_S
    while time.perf_counter() < deadline:
        recent = answers[-8:]
        if len(recent) == 8 and all(name == new_name for _, _, name in recent):
            break
        time.sleep(0.05)
    stop.set()
    sender.join(timeout=TIMEOUT_S)
    after = [answer for answer in answers if answer[0] >= started]
    new = [at for at, _, name in after if name == new_name]
    old = [at for at, _, name in after if name != new_name]
    return {
        "first_new_answer_s": round(new[0] - started, 2) if new else None,
        "last_old_answer_s": round(old[-1] - started, 2) if old else 0.0,
        "requests_during_swap": len(after),
        "failed": sum(1 for _, status, _ in answers if status != 200),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Requests per second through Ray Serve (1 and 2 replicas) and directly; swap time."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    body = png_file(ctx.image(INPUT_SIDE))
    settings = ctx.settings.model_copy(update={"model_path": ctx.model_path})
    env = settings_environment(settings)
    cpus = os.cpu_count() or 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    targets = {
        "single_process": "",
        "ray_1_replica": f"{base}/one",
        "ray_2_replicas": f"{base}/two",
    }
    cells: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {concurrency: [] for concurrency in CONCURRENCIES} for name in targets
    }
    with tempfile.TemporaryDirectory() as folder, running_service(settings) as single_url:
        targets["single_process"] = single_url
        swapped = Path(folder) / f"{ctx.model_path.stem}_swapped.onnx"
        shutil.copy(ctx.model_path, swapped)
        replicas = {"one": 1, "two": 2}
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            object_store_memory=100 * 1024**2,
            log_to_driver=False,
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            client = _get_global_client()
            started = time.perf_counter()
            client.deploy_apps(_config(env, ctx.model_path, replicas, cpus / 4))
            _wait_running(list(replicas))
            deploy_s = time.perf_counter() - started
            ctx.log(f"ray: 3 replicas ready after {deploy_s:.1f} s")
            for url in targets.values():  # one untimed request each (connections, first run)
                drive(url, body, concurrency=1, requests=1)
            for round_index in range(ROUNDS):
                names = list(targets)
                shift = round_index % len(names)
                for concurrency in CONCURRENCIES:
                    for name in names[shift:] + names[:shift]:
                        cells[name][concurrency].append(_cell(targets[name], body, concurrency))
                ctx.log(f"ray: round {round_index + 1}/{ROUNDS} done")
            swap = _measure_swap(
                targets["ray_2_replicas"],
                body,
                swapped.stem,
                lambda: client.deploy_apps(_config(env, swapped, replicas, cpus / 4)),
            )
            ctx.log(f"ray: swap {swap}")
        finally:
            serve.shutdown()
            ray.shutdown()
    rows = {name: {str(c): _summary(cells[name][c]) for c in CONCURRENCIES} for name in targets}
    single = rows["single_process"]
    overhead = {
        name: {
            str(c): (
                round(rows[name][str(c)]["requests_per_s"] / single[str(c)]["requests_per_s"], 3)
                if single[str(c)]["requests_per_s"] and rows[name][str(c)]["requests_per_s"]
                else None
            )
            for c in CONCURRENCIES
        }
        for name in ("ray_1_replica", "ray_2_replicas")
    }
    return {
        "input": f"{INPUT_SIDE}x{INPUT_SIDE}",
        "requests_per_cell": REQUESTS * ROUNDS,
        "cpus": cpus,
        "deploy_s": round(deploy_s, 1),
        "targets": rows,
        "requests_per_s_vs_single_process": overhead,
        "swap": swap,
        # A busy machine (a training run beside) lowers every figure alike: say how busy.
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
