"""Import hygiene: what importing the service pulls in."""

from __future__ import annotations

import ast
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
    modules = _top_level_modules_after("import service.core.tiling")
    assert not modules & {"onnxruntime", "fastapi", "starlette", "PIL", "pydantic"}


def test_service_never_imports_tensorflow_or_training() -> None:
    modules = _top_level_modules_after("import service.api.app, service.entry.server")
    assert "onnxruntime" in modules  # the import above did load the whole service
    assert not modules & {"tensorflow", "keras", "tf2onnx", "training"}


# --- layers: each folder imports only the layers before it, and no module imports itself back


#: The service's layers, foundations first (`service/__init__.py`); a module may import its own
#: layer and the ones before it.
LAYERS = (
    {"service.config", "service.exceptions", "service.host", "service.logs"},
    {"service.imaging"},
    {"service.core"},
    {"service.api"},
    {"service.entry", "service.main", "service.__main__"},
)
#: What the core and the layers below it must never import.
HTTP_PACKAGES = ("fastapi", "starlette")


def _service_modules() -> dict[str, Path]:
    root = REPO_ROOT / "service"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, *, module_level_only: bool) -> set[str]:
    """The modules `path` imports (each `from x import y` also as `x.y`, which may be a module).
    With `module_level_only`, imports inside functions and under TYPE_CHECKING are left out:
    those are the ones that run at import and so can form a cycle."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _layer(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and service/__init__.py")


def test_each_layer_imports_only_the_layers_before_it() -> None:
    modules = _service_modules()
    wrong = []
    for name, path in modules.items():
        if name == "service":
            continue
        for imported in _imports(path, module_level_only=False):
            if imported in modules and imported != "service" and _layer(imported) > _layer(name):
                wrong.append(f"{name} imports {imported}")
    assert not wrong


def test_the_core_and_below_never_import_the_http_framework() -> None:
    modules = _service_modules()
    below_http = [name for name in modules if name != "service" and _layer(name) <= 2]
    offenders = [
        f"{name} imports {imported}"
        for name in below_http
        for imported in _imports(modules[name], module_level_only=False)
        if imported.split(".")[0] in HTTP_PACKAGES
    ]
    assert below_http and not offenders


def test_no_import_cycle_between_modules() -> None:
    modules = _service_modules()
    graph = {
        name: {i for i in _imports(path, module_level_only=True) if i in modules and i != name}
        for name, path in modules.items()
    }
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join((*trail, name))
        visiting.add(name)
        for imported in sorted(graph[name]):
            visit(imported, (*trail, name))
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
