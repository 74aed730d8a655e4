"""README.md and docs/ against the code they describe: endpoints, headers, commands and links."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from service.api.app import create_app
from service.config import Settings
from tests.delivery.conftest import ROOT

README = (ROOT / "README.md").read_text()
#: The README is short; the reference lives in docs/ (API, operations, training).
DOCS = {path.name: path.read_text() for path in (ROOT / "docs").glob("*.md")}
API = DOCS["api.md"]


def test_the_two_commands_and_ci():
    assert "make serve" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve: ", makefile, re.MULTILINE)
    assert re.search(r"^test: ", makefile, re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in ci
    commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("make")]
    assert commands == ["make test </dev/null"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_recipes_do_what_the_readme_says(tmp_path):
    venv = tmp_path / "venv"

    def dry_run(*args: str) -> str:
        result = subprocess.run(
            ["make", "-n", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.replace(" --progress-bar off", "")  # added when CI is set

    serve = dry_run("serve")
    assert "-m venv" in serve and "pip install --upgrade pip" in serve
    assert "pip install -e '.'" in serve
    assert "-m service --host 127.0.0.1 --port 8000\n" in serve  # every model in models/
    assert "--port 8000 --model 'm.onnx'" in dry_run("serve", "MODEL=m.onnx")
    assert "pip install -e '.[gpu]'" in dry_run("serve", "SERVE_EXTRAS=gpu", "MODEL=m.onnx")
    test = dry_run("test")
    for command in (
        "pip install -e '.[train,dev]'",
        "ruff check .",
        "ruff format --check .",
        "-m pytest",
        "scripts/check_service_image.py",
    ):
        assert command in test
    retrain = dry_run("retrain", "DATA=a b", "ARGS=--steps 4")
    assert "scripts/retrain.sh --data 'a' --data 'b' --steps 4" in retrain


def test_endpoints_and_response_headers_are_documented_in_the_api_reference():
    app = create_app(Settings(model_path="unused.onnx"))
    paths = set(app.openapi()["paths"])
    for path in paths:
        assert f"`{path}`" in API or f"`GET {path}`" in API or f"`POST {path}`" in API, path
    routes = (ROOT / "service" / "api" / "routes.py").read_text()
    headers = set(re.findall(r'"(X-[A-Za-z-]+)":', routes))
    assert "X-Upscaler-Provider" in headers
    for header in headers:
        assert f"`{header}`" in API, header
    for status in (200, 400, 413, 415, 422, 503):
        assert f"| {status} |" in API


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{name}" for name in DOCS)])
def test_relative_links_resolve(page):
    text = (ROOT / page).read_text()
    folder = (ROOT / page).parent
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [link for link in links if "://" not in link and not (folder / link).exists()]
    assert not missing, missing


def test_the_readme_links_every_guide():
    for page in ("docs/api.md", "docs/operations.md", "docs/training.md", "docs/web-and-cli.md"):
        assert f"]({page})" in README, page
    assert "](models/README.md)" in README


def test_readme_examples():
    assert "curl -F file=@photo.jpg http://localhost:8000/upscale -o photo_x4.png" in README
    assert "--data-binary @photo.jpg -H 'Content-Type: image/jpeg'" in README
    assert "import httpx" in README
    assert "28.43" in DOCS["training.md"]  # the bicubic anchor on Set5
    assert "DIV2K_train_LR_bicubic/X4" in DOCS["training.md"]


def test_the_model_cards_run_records_are_in_the_repository():
    # The card's command reads each training stage's config, state and history from
    # models/runs/; in a clean clone they exist only if they are committed (not ignored).
    card = (ROOT / "models" / "README.md").read_text()
    runs = re.findall(r"--run (models/runs/\S+)", card)
    assert runs, "the model card no longer names its runs"
    for run in runs:
        for name in ("config.json", "state.json", "history.csv"):
            assert (ROOT / run / name).is_file(), f"{run}/{name}"
    assert "models/runs/ablation.json" in card
    assert (ROOT / "models" / "runs" / "ablation.json").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "models/runs/ablation.json"], cwd=ROOT, check=False
    )
    assert ignored.returncode != 0, ".gitignore keeps models/runs/ out of the repository"
