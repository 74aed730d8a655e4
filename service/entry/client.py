"""`upscale`: the command-line client (also `python -m service.entry.client`).

    upscale IN... [-o OUT] [--url URL] [--model NAME] [--quality max] [--format png|webp|jpeg]
            [--jobs N] [--overwrite] [--local]

IN is an image file, a folder (searched recursively for image files) or `-` for standard input.
Each result is written as `NAME_x4.EXT` beside its input, or under the folder OUT (keeping the
layout of an input folder); with one input, OUT may name the file, and `-o -` (or input `-`
without `-o`) writes the image to standard output.

By default the images go to a running service (`--url`, default http://127.0.0.1:8000, or
$UPSCALER_URL; a service with API keys takes the key from $UPSCALER_API_KEY): 503 answers are
retried after their Retry-After, connection errors with a bounded back-off. `--local` runs the
same upscale in this process on the service's core (the engine the `UPSCALER_*` settings choose,
no server, no FastAPI), with `--model` naming a model of the models folder or an ONNX file.
Existing outputs are skipped unless `--overwrite`; a file that fails does not stop the others.
The exit status is 0 when every image was upscaled (or skipped), 1 when any failed, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from service.host import atomic_write_bytes

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
STDIO = "-"
#: Longest wait for one Retry-After, and the back-off of connection retries (doubling).
MAX_RETRY_AFTER_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
UPLOAD_CHUNK = 64 * 1024

Progress = Callable[[int], None]


class UsageError(Exception):
    """A command line that cannot be carried out (exit status 2)."""


class UpscaleFailedError(Exception):
    """One image could not be upscaled; the message says why (the service's `detail`)."""


@dataclass(frozen=True)
class Job:
    """One image to upscale. `source` None is standard input, `target` None standard output."""

    label: str
    source: Path | None
    target: Path | None


# ---- which files, and where their results go ----------------------------------------------


def output_name(name: str, fmt: str, scale: int = 4) -> str:
    """`photo.jpg` becomes `photo_x4.png` (for --format png)."""
    return f"{Path(name).stem}_x{scale}{EXTENSIONS[fmt]}"


def _images_in(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


#: One input image: its label, its file (None: standard input) and the folder it was found in.
Found = tuple[str, Path | None, Path | None]


def _expand_inputs(inputs: Sequence[str]) -> tuple[list[Found], list[tuple[str, str]]]:
    """The images named by the inputs (files, folders searched, `-`), and the unreadable inputs."""
    problems: list[tuple[str, str]] = []
    found: list[Found] = []
    for name in inputs:
        path = Path(name)
        if name == STDIO:
            if any(source is None for _, source, _ in found):
                raise UsageError("standard input (-) can be read only once")
            found.append(("<stdin>", None, None))
        elif path.is_dir():
            images = list(_images_in(path))
            if not images:
                problems.append((name, "no image files in this folder"))
            found += [(str(image), image, path) for image in images]
        elif path.is_file():
            found.append((name, path, None))
        else:
            problems.append((name, "no such file or folder"))
    return found, problems


def plan_jobs(
    inputs: Sequence[str], output: str | None, fmt: str
) -> tuple[list[Job], list[tuple[str, str]]]:
    """Expands the inputs into jobs, and lists the inputs that cannot be read.

    Raises:
        UsageError: For `-` given twice, or standard output asked for more than one image.
    """
    found, problems = _expand_inputs(inputs)
    to_stdout = output == STDIO or (output is None and found == [("<stdin>", None, None)])
    if to_stdout and len(found) + len(problems) > 1:
        raise UsageError("standard output can take only one image; use -o FOLDER")
    several = len(found) + len(problems) > 1 or any(folder for _, _, folder in found)
    out = None if output in (None, STDIO) else Path(output)
    out_is_folder = out is not None and (
        out.is_dir() or several or output.endswith(("/", os.sep))  # type: ignore[union-attr]
    )

    jobs, seen = [], set()
    for label, source, folder in found:
        if source is not None:
            key = source.resolve()
            if key in seen:
                continue
            seen.add(key)
        name = output_name(source.name if source else "stdin", fmt)
        if to_stdout:
            target = None
        elif out is None:
            target = source.with_name(name)  # type: ignore[union-attr]
        elif not out_is_folder:
            target = out
        elif folder is not None:
            target = out / source.relative_to(folder).with_name(name)  # type: ignore[union-attr]
        else:
            target = out / name
        jobs.append(Job(label, source, target))

    # Re-running over a folder must not upscale its own results, nor anything under OUT.
    targets = {job.target.resolve() for job in jobs if job.target is not None}
    out_root = out.resolve() if out is not None and out_is_folder else None
    from_folders = {source for _, source, folder in found if folder is not None}

    def is_result(job: Job) -> bool:
        if job.source not in from_folders:
            return False
        source = job.source.resolve()  # type: ignore[union-attr]
        return source in targets or (out_root is not None and source.is_relative_to(out_root))

    return [job for job in jobs if not is_result(job)], problems


# ---- the two ways to upscale: over HTTP, or in this process --------------------------------


def _detail(response: Any) -> str:
    try:
        return str(response.json()["detail"])
    except Exception:
        return response.text.strip()[:200] or response.reason_phrase


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value else 5.0
    except ValueError:
        seconds = 5.0  # an HTTP date: rare, and a short wait is as good
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class HttpUpscaler:
    """Sends images to a running service's `POST /upscale` (as the raw request body)."""

    def __init__(
        self,
        url: str,
        *,
        fmt: str,
        quality: str,
        model: str | None,
        retries: int,
        timeout: float,
        api_key: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import httpx

        self._httpx = httpx
        self.url = url.rstrip("/")
        self.fmt = fmt
        self.params = {"quality": quality} if quality != "standard" else {}
        if model:
            self.params["model"] = model
        self.retries = retries
        self.sleep = sleep
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), headers=auth)
        self._unreachable: str | None = None

    def upscale(self, data: bytes, name: str, progress: Progress) -> bytes:
        if self._unreachable:
            raise UpscaleFailedError(self._unreachable)
        media_type = mimetypes.guess_type(name)[0] or ""
        headers = {
            "Accept": MEDIA_TYPES[self.fmt],
            "Content-Type": media_type
            if media_type.startswith("image/")
            else ("application/octet-stream"),
            "Content-Length": str(len(data)),
        }
        for attempt in range(self.retries + 1):
            sent = 0

            def body() -> Iterator[bytes]:
                nonlocal sent
                for start in range(0, len(data), UPLOAD_CHUNK):
                    chunk = data[start : start + UPLOAD_CHUNK]
                    sent += len(chunk)
                    progress(len(chunk))
                    yield chunk

            try:
                response = self.client.post(
                    f"{self.url}/upscale", content=body(), params=self.params, headers=headers
                )
            except self._httpx.TransportError as exc:
                progress(-sent)
                if isinstance(exc, self._httpx.TimeoutException) and sent == len(data):
                    raise UpscaleFailedError(f"no answer within the timeout ({exc})") from exc
                if attempt == self.retries:
                    self._unreachable = f"cannot reach the service at {self.url}: {exc}"
                    raise UpscaleFailedError(self._unreachable) from exc
                self.sleep(min(FIRST_BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS))
                continue
            if response.status_code == 200:
                return response.content
            if response.status_code == 503 and attempt < self.retries:
                progress(-sent)
                self.sleep(_retry_after(response.headers.get("retry-after")))
                continue
            raise UpscaleFailedError(f"{response.status_code}: {_detail(response)}")
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.client.close()


class LocalUpscaler:
    """Runs the service's own pipeline in this process, on the engine the settings choose (as the
    service would): no server, no FastAPI."""

    def __init__(self, *, fmt: str, quality: str, model: str | None) -> None:
        from service.config import Settings
        from service.core.engines import create_engine
        from service.core.pipeline import Pipeline, Quality
        from service.exceptions import UpscalerError
        from service.imaging.encode import OutputFormat

        settings = Settings()
        if model:
            # A model name as the service knows it (models/NAME.onnx), or a file.
            path = Path(model) if model.endswith(".onnx") else settings.models_dir / f"{model}.onnx"
            settings = Settings(model_path=path)
        if not Path(settings.model_path).is_file():
            raise UsageError(
                f"no model at {settings.model_path} (relative paths start from the current "
                f"folder): run from the repository, or pass --model FILE.onnx"
            )
        try:
            engine = create_engine(settings)
        except UpscalerError as exc:
            raise UsageError(exc.detail) from exc
        self.pipeline = Pipeline.for_engine(engine, settings)
        self.formats = (OutputFormat(fmt),)
        self.quality = Quality(quality)
        self.error = UpscalerError
        # One image at a time through the model: it already uses every core.
        self.lock = threading.Lock()

    def upscale(self, data: bytes, name: str, progress: Progress) -> bytes:
        try:
            # The same checks as the service, from the header, before any pixel is decoded.
            output_format = self.pipeline.choose_format(data, self.formats, self.quality)
            with self.lock:
                result = self.pipeline(data, output_format, self.quality)
        except self.error as exc:
            raise UpscaleFailedError(exc.detail) from exc
        progress(len(data))
        return result.content

    def close(self) -> None:
        pass


# ---- running the jobs ------------------------------------------------------------------------


def _write(target: Path, content: bytes) -> None:
    # Written beside the target and renamed, so a failure never leaves half an image behind.
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, content)


def _size(job: Job) -> int:
    return job.source.stat().st_size if job.source is not None else 0


class Runner:
    """Runs the jobs with a progress bar over files and one over bytes, and counts outcomes."""

    def __init__(
        self,
        upscaler: HttpUpscaler | LocalUpscaler,
        *,
        overwrite: bool,
        stdin: BinaryIO,
        stdout: BinaryIO,
        show_progress: bool | None,
    ) -> None:
        self.upscaler = upscaler
        self.overwrite = overwrite
        self.stdin, self.stdout = stdin, stdout
        self.show_progress = show_progress
        self.done: list[Job] = []
        self.skipped: list[Job] = []
        self.failed: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def run(self, jobs: list[Job], workers: int) -> None:
        from tqdm import tqdm

        disable = None if self.show_progress is None else not self.show_progress
        with (
            tqdm(total=len(jobs), unit="file", desc="images", disable=disable) as files,
            tqdm(
                total=sum(_size(job) for job in jobs),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="sent",
                disable=disable,
            ) as sent,
        ):
            self.files_bar, self.bytes_bar, self.write = files, sent, tqdm.write

            def one(job: Job) -> None:
                self._one(job)
                files.update(1)

            if workers == 1:
                for job in jobs:
                    one(job)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(one, jobs))

    def _progress(self, count: int) -> None:
        with self.lock:
            self.bytes_bar.update(count)

    def _one(self, job: Job) -> None:
        if job.target is not None and job.target.exists() and not self.overwrite:
            with self.lock:
                self.skipped.append(job)
                self.bytes_bar.update(_size(job))
            return
        try:
            data = job.source.read_bytes() if job.source is not None else self.stdin.read()
            if job.source is None:
                self.bytes_bar.total = (self.bytes_bar.total or 0) + len(data)
            content = self.upscaler.upscale(data, job.label, self._progress)
            if job.target is None:
                self.stdout.write(content)
                self.stdout.flush()
            else:
                _write(job.target, content)
        except (UpscaleFailedError, OSError) as exc:
            message = str(exc) if isinstance(exc, UpscaleFailedError) else exc.strerror or str(exc)
            with self.lock:
                self.failed.append((job.label, message))
            self.write(f"upscale: {job.label}: {message}", file=sys.stderr)
            return
        with self.lock:
            self.done.append(job)


# ---- the command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="upscale",
        description="Upscale images x4 with the EDSR service (or in-process with --local).",
        epilog="Exit status: 0 all upscaled or skipped, 1 any image failed, 2 usage error.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image file, folder, or - (stdin)")
    parser.add_argument(
        "-o", "--output", metavar="OUT", help="output folder (or file for one input; - for stdout)"
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("UPSCALER_URL", DEFAULT_URL),
        help="the service (default: $UPSCALER_URL or %(default)s)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="model name (GET /models); with --local, a models-folder name or an .onnx file",
    )
    parser.add_argument(
        "--quality", choices=["standard", "max"], default="standard", help="max: 8x slower"
    )
    parser.add_argument("--format", choices=list(MEDIA_TYPES), default="png", dest="fmt")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="images at once (1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--local", action="store_true", help="upscale in this process, no server")
    parser.add_argument(
        "--retries", type=int, default=5, metavar="N", help="retries on 503/connection errors (5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for one answer (600)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when it is a terminal)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.retries < 0 or args.timeout <= 0:
        parser.error("--jobs must be at least 1, --retries at least 0, --timeout positive")
    return args


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Runs the command line; returns the exit status."""
    args = parse_args(argv)
    try:
        jobs, problems = plan_jobs(args.inputs, args.output, args.fmt)
        upscaler: HttpUpscaler | LocalUpscaler
        if args.local:
            upscaler = LocalUpscaler(fmt=args.fmt, quality=args.quality, model=args.model)
        else:
            upscaler = HttpUpscaler(
                args.url,
                fmt=args.fmt,
                quality=args.quality,
                model=args.model,
                retries=args.retries,
                timeout=args.timeout,
                # From the environment only: a key on the command line lands in shell history.
                api_key=os.environ.get("UPSCALER_API_KEY", ""),
            )
    except UsageError as exc:
        print(f"upscale: {exc}", file=sys.stderr)
        return 2
    for label, message in problems:
        print(f"upscale: {label}: {message}", file=sys.stderr)
    runner = Runner(
        upscaler,
        overwrite=args.overwrite,
        stdin=stdin or sys.stdin.buffer,
        stdout=stdout or sys.stdout.buffer,
        show_progress=args.progress,
    )
    try:
        runner.run(jobs, args.jobs)
    except KeyboardInterrupt:
        print("upscale: interrupted", file=sys.stderr)
        return 130
    finally:
        upscaler.close()
    failed = runner.failed + problems
    summary = f"upscale: {len(runner.done)} upscaled, {len(runner.skipped)} skipped (existing)"
    summary += f", {len(failed)} failed" + (":" if failed else "")
    print(summary, file=sys.stderr)
    for label, message in failed:
        print(f"  {label}: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
