"""README.md against the code it describes: settings, endpoints, headers, commands and links."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from service.config import Settings
from service.main import create_app
from tests.delivery.conftest import ROOT, load_script

README = (ROOT / "README.md").read_text()
#: Linked from the README but written by others later (the lead adds the shipped model's card,
#: its before/after picture and the benchmarks); every other relative link must resolve.
PENDING_LINKS = {"models/README.md", "docs/benchmarks.md", "docs/images/before_after.png"}


def _settings_block() -> str:
    table = load_script("settings_table")
    start, end = README.find(table.BEGIN), README.find(table.END)
    assert 0 <= start < end, "README.md lacks the settings-table markers"
    return README[start : end + len(table.END)]


def test_every_setting_is_in_the_readme_table_with_its_default():
    table = load_script("settings_table")
    block = _settings_block()
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(UPSCALER_\w+)` \| (.*?) \|", block, re.MULTILINE)
    }
    expected = {variable: default for variable, default, _ in table.settings_rows()}
    assert set(rows) == {f"UPSCALER_{name.upper()}" for name in Settings.model_fields}
    assert rows == expected, "README.md's settings table is stale: run `make settings-table`"


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
    assert "-m service --host 127.0.0.1 --port 8000 --model 'models/edsr_x4.onnx'" in serve
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


def test_endpoints_and_response_headers_are_documented():
    app = create_app(Settings(model_path="unused.onnx"))
    paths = {route.path for route in app.routes} - {"/docs/oauth2-redirect", "/redoc"}
    for path in paths:
        assert f"`{path}`" in README or f"`GET {path}`" in README or f"`POST {path}`" in README, (
            path
        )
    headers = set(re.findall(r'"(X-[A-Za-z-]+)":', (ROOT / "service" / "main.py").read_text()))
    assert "X-Upscaler-Provider" in headers
    for header in headers:
        assert f"`{header}`" in README, header
    for status in (200, 400, 413, 415, 422, 503):
        assert f"| {status} |" in README


def test_relative_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert "docs/api.md" in local and "models/README.md" in local
    missing = [link for link in local if not (ROOT / link).exists() and link not in PENDING_LINKS]
    assert not missing, missing


def test_readme_examples():
    assert "curl -F file=@photo.jpg http://localhost:8000/upscale -o photo_x4.png" in README
    assert "--data-binary @photo.jpg -H 'Content-Type: image/jpeg'" in README
    assert "import httpx" in README
    assert "28.43" in README  # the bicubic anchor on Set5
    assert "DIV2K_train_LR_bicubic/X4" in README


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
