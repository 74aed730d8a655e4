"""Import hygiene: what importing the service pulls in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _top_level_modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in completed.stdout.split()}


def test_tiling_is_light_enough_for_the_training_package() -> None:
    modules = _top_level_modules_after("import service.tiling")
    assert not modules & {"onnxruntime", "fastapi", "starlette", "PIL", "pydantic"}


def test_service_never_imports_tensorflow_or_training() -> None:
    modules = _top_level_modules_after("import service.main, service.__main__")
    assert "onnxruntime" in modules  # the import above did load the whole service
    assert not modules & {"tensorflow", "keras", "tf2onnx", "training"}
