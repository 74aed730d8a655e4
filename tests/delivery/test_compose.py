"""docker-compose.yml, proven without a Docker engine.

`docker compose config` validates and normalises the file where the Compose plugin is installed
(it needs no engine); elsewhere the file is read as YAML. Either way the same checks run, on
values normalised by the helpers below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_DEVICE = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def _compose_config() -> dict[str, Any] | None:
    """The file as `docker compose config` resolves it, or None without the Compose plugin."""
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return None
    profiles = ["--profile", "cpu", "--profile", "train"]
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *profiles, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        # The file's defaults, not whatever this shell happens to export.
        env={k: v for k, v in os.environ.items() if k not in _variables()},
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _variables() -> set[str]:
    return {match.group(1) for match in _VARIABLE.finditer(COMPOSE_FILE.read_text())}


def _interpolate(value: Any) -> Any:
    """Compose's `${NAME:-default}` interpolation with no variable set: the defaults."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: match.group(2) or "", value)
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    resolved = _compose_config()
    if resolved is not None:
        return resolved
    return _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))


def _ports(service: dict) -> set[tuple[str, str]]:
    """(published, target) pairs from the short ("8000:8000") or the long syntax."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((str(port.get("published")), str(port["target"])))
        else:
            published, _, target = str(port).rpartition(":")
            pairs.add((published.rpartition(":")[2], target))
    return pairs


def _host_ips(service: dict) -> set[str]:
    """The interfaces the ports are published on ("" for all)."""
    ips = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ips.add(str(port.get("host_ip", "")))
        else:
            published = str(port).rpartition(":")[0]
            ips.add(published.rpartition(":")[0])
    return ips


def _volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """{container path: (host source, read-only)} from the short or the long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = (str(volume["source"]), bool(volume.get("read_only")))
        else:
            source, target, *options = str(volume).split(":")
            mounts[target] = (source, "ro" in options)
    return mounts


def _same_host_path(source: str, relative: str) -> bool:
    """`./models` as written, or as the absolute path `docker compose config` makes of it."""
    return source == relative or Path(source) == (ROOT / relative).resolve()


def _healthcheck(service: dict) -> list[str]:
    return service["healthcheck"]["test"]


def _dockerfile_healthcheck() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    command = lines[start + 1].strip()
    assert command.startswith("CMD ")
    return json.loads(command[4:])


def test_the_three_services_and_their_profiles(compose):
    services = compose["services"]
    assert set(services) == {"upscaler", "upscaler-cpu", "trainer"}
    # `docker compose up` starts the GPU service only; the others sit behind profiles.
    assert not services["upscaler"].get("profiles")
    assert services["upscaler-cpu"]["profiles"] == ["cpu"]
    assert services["trainer"]["profiles"] == ["train"]


def test_upscaler_reserves_one_nvidia_gpu(compose):
    devices = compose["services"]["upscaler"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [GPU_DEVICE]
    assert compose["services"]["upscaler"]["build"]["args"]["SERVICE_EXTRAS"] == "gpu"


def test_cpu_variant_needs_no_nvidia_runtime(compose):
    cpu = compose["services"]["upscaler-cpu"]
    assert "devices" not in json.dumps(cpu.get("deploy", {}))
    assert "runtime" not in cpu
    assert cpu["build"]["args"]["SERVICE_EXTRAS"] == ""


@pytest.mark.parametrize("name", ["upscaler", "upscaler-cpu"])
def test_service_port_healthcheck_restart_and_model_volume(compose, name):
    service = compose["services"][name]
    assert _ports(service) == {("8000", "8000")}
    assert service["restart"] == "unless-stopped"
    assert service["build"]["target"] == "service"
    health = service["healthcheck"]
    assert "/readyz" in " ".join(_healthcheck(service))
    assert _healthcheck(service)[0] == "CMD"
    # The same probe as the image's own HEALTHCHECK.
    assert _healthcheck(service)[1:] == _dockerfile_healthcheck()
    assert {"interval", "timeout", "retries", "start_period"} <= set(health)
    source, read_only = _volumes(service)["/app/models"]
    assert _same_host_path(source, "./models") and read_only
    # The whole folder, hot-reloaded; UPSCALER_MODEL_PATH would serve one file alone.
    environment = service["environment"]
    assert environment["UPSCALER_MODELS_DIR"] == "/app/models"
    assert environment["UPSCALER_DEFAULT_MODEL"] == "edsr_x4"
    assert "UPSCALER_MODEL_PATH" not in environment
    assert environment["UPSCALER_API_KEYS"] in ("", None)


@pytest.mark.parametrize("name", ["upscaler", "upscaler-cpu"])
def test_service_is_published_on_loopback_only_and_drains_on_stop(compose, name):
    service = compose["services"][name]
    # Open API (no key by default): only this host reaches it unless UPSCALER_PUBLISH says so.
    assert _host_ips(service) == {"127.0.0.1"}
    grace = str(service["stop_grace_period"])
    seconds = {"30s": 30, "30": 30}.get(grace)
    if seconds is None:  # `docker compose config` writes durations in its own way
        seconds = int(float(grace.rstrip("s")))
    assert seconds > int(service["environment"]["UPSCALER_DRAIN_SECONDS"])


def test_trainer_trains_on_mounted_data_and_exports_into_models(compose):
    trainer = compose["services"]["trainer"]
    assert trainer["build"]["target"] == "train"
    mounts = _volumes(trainer)
    data_source, data_read_only = mounts["/data"]
    assert data_read_only and _same_host_path(data_source, "./data")
    models_source, models_read_only = mounts["/app/models"]
    assert _same_host_path(models_source, "./models") and not models_read_only
    assert "/app/runs" in mounts and not mounts["/app/runs"][1]
    assert trainer["command"][:2] == ["--data", "/data"]
    assert trainer.get("restart", "no") == "no"


def test_compose_file_is_plain_yaml_with_no_tabs():
    text = COMPOSE_FILE.read_text()
    assert "\t" not in text
    assert yaml.safe_load(text)["name"] == "edsr-upscaler"
