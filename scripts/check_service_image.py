"""Checks the service image without a Docker engine (CI has none): `make test` runs this.

Installs what the Dockerfile's service-build stage installs (its COPY sources, `pip install`,
`pip check`; CPU unless --extras gpu) into a fresh venv, proves TensorFlow and Keras absent, runs
the service stage's CMD on a loopback port with models/edsr_x4.onnx until its HEALTHCHECK passes,
and upscales one PNG by POST /upscale and as a job (the image keeps jobs in /app/jobs).
tests/delivery/test_dockerfile.py keeps the rest of the Dockerfile in step.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.server import free_port, service_process

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "edsr_x4.onnx"  # the image's default model, in /app/models
FORBIDDEN = ("tensorflow", "keras", "tf2onnx")
INSTALL_S, READY_S, UPSCALE_S = 1200, 180, 120
#: Where `service` is imported from, and which of argv[1:] can be imported.
FIND = (
    "import importlib.util as u, json, sys, service\n"
    "print(json.dumps([service.__file__, [m for m in sys.argv[1:] if u.find_spec(m)]]))"
)


def stage(dockerfile: str, name: str) -> str:
    """The text of one build stage, from its FROM line to the next."""
    return dockerfile.split(f" AS {name}\n", 1)[1].split("\nFROM ", 1)[0]


def copy_sources(dockerfile: str) -> list[str]:
    """What the service-build stage copies from the build context."""
    lines = re.findall(r"^COPY (?!--)(.+) \S+$", stage(dockerfile, "service-build"), re.M)
    return [source for line in lines for source in line.split()]


def image_commands(dockerfile: str, port: int) -> tuple[list[str], list[str]]:
    """The service stage's CMD and HEALTHCHECK command, moved to 127.0.0.1:<port>."""
    service = stage(dockerfile, "service")
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", service, re.M)[-1])
    probe = json.loads(re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", service, re.M)[1])
    cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    return cmd, [part.replace("127.0.0.1:8000/", f"127.0.0.1:{port}/") for part in probe]


def image_settings(dockerfile: str) -> dict[str, str]:
    """The service stage's UPSCALER_* ENV, its /app/models read from this checkout's models/."""
    pairs = re.findall(r"\b(UPSCALER_\w+)=(\S+)", stage(dockerfile, "service"))
    return {name: value.replace("/app/models", str(MODEL.parent)) for name, value in pairs}


def target(extras: str) -> str:
    """The service-build stage's pip argument, "./${SERVICE_EXTRAS:+[${SERVICE_EXTRAS}]}"."""
    return "./" + (f"[{extras}]" if extras else "")


def png(width: int, height: int) -> bytes:
    gradient, out = Image.linear_gradient("L"), io.BytesIO()
    image = Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(45)))
    image.resize((width, height)).save(out, "PNG")
    return out.getvalue()


def install(dockerfile: str, tmp: Path, extras: str, env: dict[str, str]) -> None:
    """The service-build stage in tmp/: copy, venv, pip install, pip check; then no TensorFlow."""
    build, venv = tmp / "build", tmp / "venv"
    for source in copy_sources(dockerfile):
        (build / source).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, build / source, ignore=shutil.ignore_patterns("__py*"))
        else:
            shutil.copy2(ROOT / source, build / source)
    python = str(venv / "bin" / "python")
    for step in (
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "-q", "--progress-bar", "off", target(extras)],
        [python, "-m", "pip", "check"],
    ):
        subprocess.run(step, cwd=build, env=env, check=True, timeout=INSTALL_S)
    found = subprocess.run(
        [python, "-c", FIND, *FORBIDDEN], cwd=tmp, env=env, capture_output=True, timeout=60
    )
    origin, importable = json.loads(found.stdout or "[null, null]")
    if not str(origin).startswith(str(venv)) or importable != []:
        raise RuntimeError(f"service from {origin}, importable: {importable} {found.stderr!r}")


def serve_and_upscale(cmd: list[str], probe: list[str], env: dict[str, str], tmp: Path) -> None:
    """Runs the image's CMD until its HEALTHCHECK passes, then upscales a 12x8 PNG through
    POST /upscale and as a job (PUT /jobs/ID, then its result)."""
    port = cmd[cmd.index("--port") + 1]
    cmd = [shutil.which(cmd[0], path=env["PATH"]) or cmd[0], *cmd[1:]]

    def healthy() -> bool:
        return subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0

    base = f"http://127.0.0.1:{port}"
    with (
        service_process(cmd, healthy, env=env, cwd=tmp, timeout_s=READY_S),
        httpx.Client(base_url=base, trust_env=False, timeout=UPSCALE_S) as client,
    ):
        files = {"file": ("check.png", png(12, 8), "image/png")}
        expect_png_48x32("/upscale", client.post("/upscale", files=files))
        submitted = client.put("/jobs/image-check", content=png(12, 8))
        if submitted.status_code != 202:
            raise RuntimeError(f"PUT /jobs: {submitted.status_code} {submitted.text[:300]}")
        deadline = time.monotonic() + UPSCALE_S
        while client.get("/jobs/image-check").json()["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job did not finish within {UPSCALE_S} s")
            time.sleep(0.2)
        expect_png_48x32("the job's result", client.get("/jobs/image-check/result"))


def expect_png_48x32(what: str, reply: httpx.Response) -> None:
    """Raises unless `reply` is a 200 with the 48x32 PNG of a 12x8 input."""
    if reply.status_code != 200 or reply.headers["content-type"] != "image/png":
        raise RuntimeError(f"{what}: {reply.status_code} {reply.content[:300]!r}")
    with Image.open(io.BytesIO(reply.content)) as image:
        if (image.format, image.size) != ("PNG", (48, 32)):
            raise RuntimeError(f"{what}: 12x8 gave a {image.format} of {image.size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="SERVICE_EXTRAS (default: none, CPU only)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and stop")
    args = parser.parse_args(argv)
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd, probe = image_commands(dockerfile, free_port())
    copies, pip = copy_sources(dockerfile), target(args.extras)
    print(f"check: copy {copies}; pip install {pip!r}; run {cmd}", flush=True)
    if args.dry_run:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("check: terminated"))
    started, tmp = time.monotonic(), Path(tempfile.mkdtemp(prefix="check-service-image-"))
    # Nothing of this shell's Python or UPSCALER_* settings; PIP_* (index, cache) pass through.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSCALER_", "PYTHON"))}
    venv = tmp / "venv"  # as the image: VIRTUAL_ENV=/opt/venv, PATH=/opt/venv/bin:$PATH
    env |= {
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv}/bin:{env['PATH']}",
        **image_settings(dockerfile),
    }
    try:
        install(dockerfile, tmp, args.extras, env)
        print(f"check: installed in {time.monotonic() - started:.0f} s, no {FORBIDDEN}", flush=True)
        serve_and_upscale(cmd, probe, env, tmp)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        # A server that failed brings its log's last lines in the error.
        print(f"check: FAILED: {error}", flush=True)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = f"{time.monotonic() - started:.0f} s: 12x8 PNG -> 48x32 PNG, by /upscale and as a job"
    print(f"check: OK in {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
