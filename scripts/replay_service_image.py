"""Replays the service image's build in a fresh virtual environment and serves a request from it.

No Docker engine runs in CI, so this proves the Dockerfile's dependency set without one. It reads
the Dockerfile and replays the stage that builds the service's Python environment (the stage the
`service` target copies /opt/venv from): its ENV, ARG, WORKDIR, COPY and RUN lines, and the ENV,
WORKDIR and SHELL of the stages it builds on, with the image paths (/opt/venv, /build, /app)
mapped into a temporary directory. RUN lines of the other stages (creating the user, listing the
CUDA wheel libraries in ld.so.conf) need root and change nothing Python can import; they are
listed and skipped. Then it:

1. checks that tensorflow, keras and tf2onnx can NOT be imported from that environment;
2. starts the service with the `service` stage's CMD and ENV on a free localhost port, on the
   model baked in from models/ when there is one, else on a tiny x4 ONNX model built here (with
   onnx.helper, no TensorFlow);
3. runs the image's HEALTHCHECK command until it passes (it polls /readyz);
4. POSTs a PNG to /upscale and checks that a PNG of 4x the size comes back;
5. stops the server, whatever happened.

SERVICE_EXTRAS is replayed as "" (the CPU variant) by default: CI has no GPU, and the gpu extra
only adds NVIDIA's CUDA and cuDNN wheels. `--build-arg SERVICE_EXTRAS=gpu` replays the GPU one.

    python scripts/replay_service_image.py [--dry-run] [--model FILE] [--build-arg NAME=VALUE]

Standard library only, except that building the tiny model needs `onnx` in the interpreter that
runs this script (`make test` uses the project's .venv, which has it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "service"
#: Build args replayed unless overridden: the CPU variant (see the module docstring).
DEFAULT_BUILD_ARGS = {"SERVICE_EXTRAS": ""}
#: Image paths the Dockerfile creates; each is mapped to a folder of the same name in the
#: temporary directory. Everything else (/bin/bash, /usr/...) is the host's.
MAPPED_PREFIXES = ("/opt/venv", "/build", "/app")
#: Stands for the base image's PATH in the plan; replaced by a host PATH when replaying.
BASE_PATH = "<base image PATH>"
#: Must not be importable from the service environment.
FORBIDDEN_MODULES = ("tensorflow", "keras", "tf2onnx")
#: Host variables passed to every replayed step: pip's configuration (index, cache, certificates),
#: proxies and locale. The Dockerfile's ENV lines are applied on top.
PASSTHROUGH = re.compile(
    r"^(HOME|USER|LOGNAME|TMPDIR|LANG|LC_[A-Z]+|TZ|CI|XDG_(CACHE|CONFIG)_HOME|PIP_\w+"
    r"|(HTTPS?|NO|ALL)_PROXY|(https?|no|all)_proxy|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE)$"
)
READY_TIMEOUT_S = 180
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReplayError(RuntimeError):
    """The replay found the image's recipe incomplete or broken."""


# --------------------------------------------------------------------------- Dockerfile parsing


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: dict[str, Stage]


def parse_dockerfile(text: str) -> Dockerfile:
    """Splits a Dockerfile into global ARGs and stages of continuation-joined instructions."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if re.match(r"^\s*#", raw):
            continue  # comments (and parser directives), also inside continuations
        if not pending and not raw.strip():
            continue
        if not pending:
            start = number
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1]
            continue
        logical.append((start, pending + raw))
        pending = ""
    if pending:
        logical.append((start, pending))

    global_args: dict[str, str | None] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for number, line in logical:
        parts = line.strip().split(None, 1)
        keyword, args = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
        if keyword == "FROM":
            tokens = [t for t in args.split() if not t.startswith("--")]
            name = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name.lower(), base=tokens[0])
            stages[current.name] = current
        elif current is None:
            if keyword != "ARG":
                raise ReplayError(f"line {number}: {keyword} before the first FROM")
            name, sep, default = args.strip().partition("=")
            global_args[name] = default if sep else None
        else:
            current.instructions.append(Instruction(keyword, args.strip(), number))
    return Dockerfile(global_args, stages)


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's variable substitution for ENV/WORKDIR/COPY: $NAME, ${NAME}, ${NAME:-default}."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if match.group("default") is not None and not env.get(name):
            return match.group("default")
        return env.get(name, "")

    pattern = r"\$(?:\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|(?P<plain>\w+))"
    return re.sub(pattern, substitute, value)


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """Leading `--name=value` flags of an instruction, and the rest."""
    flags: dict[str, str] = {}
    rest = args.strip()
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    """The assignments of one ENV line, expanded against the environment before that line."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy form: ENV NAME value with spaces
        name, _, value = args.partition(" ")
        return {name: expand(value.strip(), env)}
    assignments = {}
    for token in tokens:
        name, _, value = token.partition("=")
        assignments[name] = expand(value, env)
    return assignments


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (CMD, SHELL, HEALTHCHECK CMD), or a shell form."""
    text = args.strip()
    if text.startswith("["):
        return json.loads(text)
    return ["/bin/sh", "-c", text]


# --------------------------------------------------------------------------- the replay plan


@dataclass
class Step:
    """One thing the replay does, in image coordinates (paths as inside the image)."""

    kind: str  # "copy", "run", "skip"
    stage: str
    line: int
    text: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    shell: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    dest: str = ""


@dataclass
class Plan:
    build_stage: str
    build_args: dict[str, str]
    base_image: str
    steps: list[Step]
    runtime_env: dict[str, str]
    runtime_workdir: str
    cmd: list[str]
    healthcheck: list[str]

    @property
    def venv(self) -> str:
        """The image's virtual environment (VIRTUAL_ENV of the runtime stage)."""
        return self.runtime_env["VIRTUAL_ENV"]


@dataclass
class _StageState:
    env: dict[str, str]
    workdir: str = "/"
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def _chain(dockerfile: Dockerfile, name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, outermost first."""
    chain = [dockerfile.stages[name]]
    while chain[0].base.lower() in dockerfile.stages:
        chain.insert(0, dockerfile.stages[chain[0].base.lower()])
    return chain


#: A RUN command that changes Python packages (pip or uv installing or removing).
_INSTALLS_PACKAGES = re.compile(r"\b(?:pip3?|uv\s+pip)\s+(?:install|uninstall|sync)\b")


def _walk(
    dockerfile: Dockerfile,
    stage_name: str,
    build_args: dict[str, str],
    steps: list[Step],
    replay_runs_in: str,
) -> _StageState:
    """Applies a stage chain's instructions; RUN lines only count in `replay_runs_in`."""
    state = _StageState(env={"PATH": BASE_PATH, "LANG": "C.UTF-8"})
    for stage in _chain(dockerfile, stage_name):
        args: dict[str, str] = {}
        for ins in stage.instructions:
            scope = {**state.env, **args}
            if ins.keyword == "ARG":
                name, sep, default = ins.args.partition("=")
                if name in build_args:
                    args[name] = build_args[name]
                elif sep:
                    args[name] = expand(default, scope)
                else:
                    args[name] = dockerfile.global_args.get(name) or ""
            elif ins.keyword == "ENV":
                state.env.update(parse_env(ins.args, scope))
            elif ins.keyword == "WORKDIR":
                state.workdir = os.path.normpath(
                    os.path.join(state.workdir, expand(ins.args, scope))
                )
            elif ins.keyword == "SHELL":
                state.shell = json.loads(ins.args)
            elif ins.keyword == "CMD":
                state.cmd = exec_form(ins.args)
            elif ins.keyword == "HEALTHCHECK":
                _, rest = split_flags(ins.args)
                keyword, _, command = rest.partition(" ")
                state.healthcheck = exec_form(command) if keyword.upper() == "CMD" else []
            elif ins.keyword == "ENTRYPOINT" and stage.name == stage_name:
                # The replay starts the image's CMD as the whole command line; an entrypoint
                # would change what the image runs without the replay noticing.
                raise ReplayError(f"line {ins.line}: ENTRYPOINT in {stage_name!r} is not replayed")
            elif ins.keyword == "RUN":
                flags, command = split_flags(ins.args)
                replay = stage.name == replay_runs_in
                if not replay and _INSTALLS_PACKAGES.search(command):
                    # Skipped RUN lines are root-only system set-up; a package change there
                    # would make the image differ from the replayed environment unseen.
                    raise ReplayError(
                        f"line {ins.line}: a pip command in stage {stage.name!r}, which the "
                        f"replay does not run; install packages in {replay_runs_in!r}"
                    )
                steps.append(
                    Step(
                        kind="run" if replay else "skip",
                        stage=stage.name,
                        line=ins.line,
                        text=command,
                        env={**state.env, **args},
                        workdir=state.workdir,
                        shell=list(state.shell),
                    )
                )
            elif ins.keyword in ("COPY", "ADD"):
                flags, rest = split_flags(ins.args)
                tokens = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
                tokens = [expand(t, scope) for t in tokens]
                dest = tokens[-1]
                folder = dest.endswith("/") or dest in (".", "..")
                dest = os.path.normpath(os.path.join(state.workdir, dest)) + ("/" if folder else "")
                if "from" in flags:
                    # Copies the build stage's output to the same path: nothing to do when both
                    # stages are replayed into the same folders.
                    if any(os.path.normpath(src) != os.path.normpath(dest) for src in tokens[:-1]):
                        raise ReplayError(
                            f"line {ins.line}: COPY --from must keep the path to be replayable"
                        )
                    continue
                if stage.name == replay_runs_in or stage.name == stage_name:
                    steps.append(
                        Step(
                            kind="copy",
                            stage=stage.name,
                            line=ins.line,
                            text=f"COPY {ins.args}",
                            sources=tokens[:-1],
                            dest=dest,
                        )
                    )
    return state


def build_plan(
    dockerfile_text: str, build_args: dict[str, str] | None = None, target: str = TARGET
) -> Plan:
    """What replaying `target`'s Python environment means for this Dockerfile."""
    dockerfile = parse_dockerfile(dockerfile_text)
    if target not in dockerfile.stages:
        raise ReplayError(f"no stage {target!r} in the Dockerfile")
    sources = [
        split_flags(ins.args)[0]["from"].lower()
        for stage in _chain(dockerfile, target)
        for ins in stage.instructions
        if ins.keyword == "COPY" and "from" in split_flags(ins.args)[0]
    ]
    if len(sources) != 1:
        raise ReplayError(f"expected one COPY --from in {target!r}'s chain, found {sources}")
    build_stage = sources[0]
    args = {**DEFAULT_BUILD_ARGS, **(build_args or {})}
    steps: list[Step] = []
    _walk(dockerfile, build_stage, args, steps, replay_runs_in=build_stage)
    runtime = _walk(dockerfile, target, args, steps, replay_runs_in=build_stage)
    unique: dict[tuple[str, int], Step] = {}  # both walks pass through the shared base stage
    for step in steps:
        unique.setdefault((step.stage, step.line), step)
    base = _chain(dockerfile, target)[0].base
    base_image = expand(base, {k: v or "" for k, v in dockerfile.global_args.items()})
    return Plan(
        build_stage=build_stage,
        build_args=args,
        base_image=base_image,
        steps=list(unique.values()),
        runtime_env=runtime.env,
        runtime_workdir=runtime.workdir,
        cmd=runtime.cmd,
        healthcheck=runtime.healthcheck,
    )


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif char == "*":
            out, i = out + "[^/]*", i + 1
        elif char == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(char), i + 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """`.dockerignore` matching: the last matching pattern wins; a folder match covers its files."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
            self.rules.append((negated, _pattern_regex(pattern)))

    def excluded(self, relpath: str) -> bool:
        parts = Path(relpath).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negated, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = not negated
        return result


# --------------------------------------------------------------------------- replaying


class Replayer:
    """Executes a plan with the image paths mapped into `tmp`."""

    def __init__(self, plan: Plan, tmp: Path, python: str, context: Path = ROOT) -> None:
        self.plan, self.tmp, self.context = plan, tmp, context
        ignore_file = context / ".dockerignore"
        self.ignore = DockerIgnore(ignore_file.read_text() if ignore_file.exists() else "")
        self.shim = tmp / "bin"
        self.shim.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            (self.shim / name).symlink_to(python)
        self.base_path = f"{self.shim}:/usr/local/bin:/usr/bin:/bin"
        self.host_env = {k: v for k, v in os.environ.items() if PASSTHROUGH.match(k)}

    def map(self, text: str) -> str:
        """Rewrites image paths (/opt/venv, /build, /app) to their folders under tmp."""
        pattern = (
            r"(?<![\w./-])(" + "|".join(re.escape(p) for p in MAPPED_PREFIXES) + r")(?![\w.-])"
        )
        mapped = re.sub(pattern, lambda m: str(self.tmp / m.group(1).lstrip("/")), text)
        return mapped.replace(BASE_PATH, self.base_path)

    def env(self, image_env: dict[str, str]) -> dict[str, str]:
        return {**self.host_env, **{k: self.map(v) for k, v in image_env.items()}}

    def copy(self, step: Step) -> None:
        dest = Path(self.map(step.dest))
        for source in step.sources:
            if any(char in source for char in "*?["):
                raise ReplayError(f"line {step.line}: wildcards in COPY are not replayed")
            src = (self.context / source).resolve()
            rel = os.path.relpath(src, self.context)
            if not src.exists() or self.ignore.excluded(rel):
                raise ReplayError(
                    f"line {step.line}: {step.text}: {source} is missing from the build context "
                    "(or excluded by .dockerignore); docker build would fail the same way"
                )
            if src.is_dir():
                for path in sorted(src.rglob("*")):
                    path_rel = os.path.relpath(path, self.context)
                    if path.is_file() and not self.ignore.excluded(path_rel):
                        target = dest / path.relative_to(src)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, target)
            else:
                target = dest / src.name if step.dest.endswith("/") else dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)

    def run(self, step: Step) -> None:
        workdir = Path(self.map(step.workdir))
        workdir.mkdir(parents=True, exist_ok=True)
        command = self.map(step.text)
        subprocess.run([*step.shell, command], env=self.env(step.env), cwd=workdir, check=True)

    def replay(self) -> None:
        for step in self.plan.steps:
            say(f"[{step.stage}:{step.line}] {step.kind.upper()}: {step.text}")
            if step.kind == "copy":
                self.copy(step)
            elif step.kind == "run":
                self.run(step)
        Path(self.map(self.plan.runtime_workdir)).mkdir(parents=True, exist_ok=True)


def say(message: str) -> None:
    print(f"replay: {message}", flush=True)


def describe(plan: Plan) -> None:
    say(f"Dockerfile target {TARGET!r}: environment built in stage {plan.build_stage!r}")
    say(f"base image {plan.base_image}; build args {plan.build_args}")
    for step in plan.steps:
        verb = {"run": "RUN ", "copy": "    ", "skip": "skip RUN (needs root)"}[step.kind]
        say(f"  [{step.stage}:{step.line}] {verb} {step.text}")
    say(f"runtime ENV: {plan.runtime_env}")
    say(f"CMD: {plan.cmd}")
    say(f"HEALTHCHECK: {plan.healthcheck}")


def check_python_version(plan: Plan, python: str) -> None:
    match = re.search(r"python:(\d+\.\d+)", plan.base_image)
    found = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if match and match.group(1) != found:
        say(f"WARNING: the image uses Python {match.group(1)}, this replay Python {found}")


def check_forbidden_imports(python: Path, env: dict[str, str]) -> None:
    for module in FORBIDDEN_MODULES:
        result = subprocess.run(
            [str(python), "-c", f"import {module}"], env=env, capture_output=True, text=True
        )
        if result.returncode == 0 or "ModuleNotFoundError" not in result.stderr:
            raise ReplayError(
                f"`import {module}` must fail in the service environment: "
                f"rc={result.returncode} {result.stderr.strip()[-300:]}"
            )
        say(f"ok: `import {module}` fails (ModuleNotFoundError)")


# --------------------------------------------------------------------------- the running service


def tiny_png(width: int = 12, height: int = 8) -> bytes:
    """An RGB gradient PNG, written with zlib so that nothing beyond the stdlib is needed."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 20 % 256, y * 30 % 256, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ReplayError("the response is not a PNG")
    return struct.unpack(">II", data[16:24])


def build_tiny_model(path: Path) -> Path:
    """An x4 model following the export contract (lr NHWC -> conv -> DepthToSpace -> sr)."""
    sys.path.insert(0, str(ROOT))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from tests.service.conftest import build_model  # the service tests' own model
    except ImportError:
        build_model = None
    if build_model is not None:
        return build_model(path)
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = (rng.normal(1.0, 0.5, (48, 3, 3, 3)) / 27).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["lr"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w"], ["f"], pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["f"], ["y"], blocksize=4, mode="DCR"),
        helper.make_node("Transpose", ["y"], ["sr"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_x4",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", "H4", "W4", 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"scale": "4", "filters": "3", "blocks": "0"})
    onnx.save(model, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def localise(command: list[str], port: int) -> list[str]:
    """The image's command for this host: listen on 127.0.0.1:<port> instead of 0.0.0.0:8000."""
    out = list(command)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in out:
            out[out.index(flag) + 1] = value
    return [re.sub(r"(127\.0\.0\.1|localhost):8000\b", rf"\g<1>:{port}", part) for part in out]


@contextlib.contextmanager
def running_server(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator:
    """Starts the server and always stops it (SIGTERM, then SIGKILL after 20 s)."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    say(f"started pid {process.pid}: {shlex.join(command)}")
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        say(f"server stopped (exit status {process.returncode})")


def wait_healthy(healthcheck: list[str], env: dict[str, str], process, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise ReplayError(f"the service exited with status {process.returncode}")
        check = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
        if check.returncode == 0:
            return time.monotonic() - started
        time.sleep(1)
    raise ReplayError(f"the HEALTHCHECK did not pass within {READY_TIMEOUT_S} s")


def exercise(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
        ready = json.load(response)
    if ready.get("status") != "ready":
        raise ReplayError(f"/readyz: {ready}")
    model = ready["model"]
    say(f"/readyz: ready on {ready['providers']}, model {model['path']} x{model['scale']}")
    image = tiny_png()
    boundary = "replay-service-image-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="tiny.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/upscale",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            data, headers = response.read(), response.headers
    except urllib.error.HTTPError as error:
        raise ReplayError(f"/upscale answered {error.code}: {error.read()[:300]!r}") from error
    if headers.get_content_type() != "image/png":
        raise ReplayError(f"/upscale answered {headers.get_content_type()}")
    size, expected = png_size(data), (12 * model["scale"], 8 * model["scale"])
    if size != expected:
        raise ReplayError(f"/upscale returned {size}, expected {expected}")
    say(
        f"/upscale: 12x8 PNG -> {size[0]}x{size[1]} PNG on "
        f"{headers.get('X-Upscaler-Provider')} in {headers.get('X-Inference-Time-Ms')} ms"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="like docker build --build-arg (default: SERVICE_EXTRAS= , the CPU variant)",
    )
    parser.add_argument("--model", type=Path, help="ONNX model to serve (default: see above)")
    parser.add_argument(
        "--python",
        default=getattr(sys, "_base_executable", sys.executable),
        help="interpreter standing in for the image's python (default: this one's base)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    args = parser.parse_args(argv)

    build_args = dict(arg.partition("=")[::2] for arg in args.build_arg)
    plan = build_plan(args.dockerfile.read_text(), build_args)
    describe(plan)
    if args.dry_run:
        return 0

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="replay-service-image-"))
    log = tmp / "server.log"
    try:
        check_python_version(plan, args.python)
        replayer = Replayer(plan, tmp, args.python)
        replayer.replay()
        env = replayer.env(plan.runtime_env)
        venv_python = Path(replayer.map(plan.venv)) / "bin" / "python"
        check_forbidden_imports(venv_python, env)

        baked = Path(replayer.map(env["UPSCALER_MODEL_PATH"]))
        if args.model is not None:
            env["UPSCALER_MODEL_PATH"] = str(args.model.resolve())
        elif not baked.is_file():
            say(f"no model baked in ({baked.name} not in models/): building a tiny x4 model")
            env["UPSCALER_MODEL_PATH"] = str(build_tiny_model(tmp / "tiny_x4.onnx"))
        say(f"serving {env['UPSCALER_MODEL_PATH']}")

        port = free_port()
        command = localise(plan.cmd, port)
        command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
        cwd = Path(replayer.map(plan.runtime_workdir))
        with running_server(command, env, cwd, log) as process:
            waited = wait_healthy(localise(plan.healthcheck, port), env, process, log)
            say(f"HEALTHCHECK passed after {waited:.1f} s")
            exercise(port)
    except (ReplayError, subprocess.CalledProcessError, OSError, KeyboardInterrupt) as error:
        say(f"FAILED: {error}")
        if log.exists():
            say("server log (last 40 lines):")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), flush=True)
        return 1
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"OK in {time.monotonic() - started:.0f} s: the service image's dependency set is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
