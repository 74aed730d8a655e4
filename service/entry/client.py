"""`upscale`: the command-line client (also `python -m service.entry.client`).

    upscale IN... [-o OUT] [--url URL] [--model NAME] [--quality max] [--format png|webp|jpeg]
            [--metadata keep] [--jobs N] [--overwrite] [--local] [--job-threshold MP] [--resume]

IN is an image file, a folder (searched recursively for image files) or `-` for standard input.
Each result is written as `NAME_x4.EXT` beside its input, or under the folder OUT (keeping the
layout of an input folder); with one input, OUT may name the file, and `-o -` (or input `-`
without `-o`) writes the image to standard output.

By default the images go to a running service (`--url`, default http://127.0.0.1:8000, or
$UPSCALER_URL; a service with API keys takes the key from $UPSCALER_API_KEY): 503 answers are
retried after their Retry-After, connection errors with a bounded back-off. `--local` runs the
same upscale in this process on the service's core (the engine the `UPSCALER_*` settings choose,
no server, no FastAPI), with `--model` naming a model of the models folder or an ONNX file.
Images of at least `--job-threshold` megapixels go as jobs when the service keeps them, each
with a progress bar of tiles (`service.entry.jobs_client`); after Ctrl-C or a lost connection
the jobs keep running there, and the same command with `--resume` picks them up.
With the progress bars on, each image sent is announced with the service's estimate of its model
time. `--metadata keep` keeps the photo's EXIF and XMP (see `service.imaging.metadata`).
Existing outputs are skipped unless `--overwrite`; a file that fails does not stop the others.
The exit status is 0 when every image was upscaled (or skipped), 1 when any failed, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import io
import math
import mimetypes
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from service.host import atomic_write_bytes, limit_malloc_arenas

if TYPE_CHECKING:
    from service.entry.jobs_client import JobsUpscaler

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
class Upscaled:
    """One result: the image, the model that ran it, and, when the service chose the model
    (`auto`), what it found in the input (`jpeg,noise`; `none` for a clean image)."""

    content: bytes
    model: str = ""
    found: str | None = None

    @classmethod
    def from_headers(cls, content: bytes, headers: Any) -> Upscaled:
        """From an answer's `X-Upscaler-Model` and `X-Upscaler-Evidence` headers."""
        evidence = headers.get("x-upscaler-evidence") or ""
        found = dict(part.strip().partition("=")[::2] for part in evidence.split(";"))
        return cls(content, headers.get("x-upscaler-model", ""), found.get("found"))


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

    kept, clashes = _one_input_per_output([job for job in jobs if not is_result(job)])
    return kept, problems + clashes


def _one_input_per_output(jobs: list[Job]) -> tuple[list[Job], list[tuple[str, str]]]:
    """The jobs whose output no earlier job writes, and a problem for each other one (`x.png`
    and `x.jpg` both make `x_x4.png`: the second would otherwise be skipped as existing)."""
    first: dict[Path, Job] = {}
    kept, clashes = [], []
    for job in jobs:
        key = job.target.resolve() if job.target is not None else None
        if key is not None and key in first:
            message = f"its output {job.target} is also {first[key].label}'s; upscale it alone"
            clashes.append((job.label, f"{message} with -o FILE"))
            continue
        if key is not None:
            first[key] = job
        kept.append(job)
    return kept, clashes


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


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header, or None when Pillow cannot tell (the service
    will say what is wrong with it)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


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
        keep_metadata: bool = False,
        tell: Callable[[str], None] | None = None,
    ) -> None:
        import httpx

        self._httpx = httpx
        self.url = url.rstrip("/")
        self.fmt = fmt
        self.params = {"quality": quality} if quality != "standard" else {}
        if model:
            self.params["model"] = model
        if keep_metadata:
            self.params["metadata"] = "keep"
        self.retries = retries
        self.sleep = sleep
        self.tell = tell
        #: Whether requests carry an API key (the service then keeps this key's jobs apart).
        self.keyed = bool(api_key)
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), headers=auth)
        self._unreachable: str | None = None
        # GET /models, read once (`_listed_paces`): each model's pace, the default, `auto`.
        self._paces: dict[str, float | None] | None = None
        self._listed_default: str | None = None
        self._auto: dict[str, str] = {}

    def upscale(self, data: bytes, name: str, progress: Progress) -> Upscaled:
        if self._unreachable:
            raise UpscaleFailedError(self._unreachable)
        self._tell_estimate(data, name)
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
                return Upscaled.from_headers(response.content, response.headers)
            if response.status_code == 503 and attempt < self.retries:
                progress(-sent)
                self.sleep(_retry_after(response.headers.get("retry-after")))
                continue
            raise UpscaleFailedError(f"{response.status_code}: {_detail(response)}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _tell_estimate(self, data: bytes, name: str) -> None:
        """Says, before sending, about how long the service's model will take on the image:
        its megapixels times the model's `seconds_per_megapixel` (GET /models, timed on the
        service's host at warm-up), 8 times that with quality max."""
        if self.tell is None:
            return
        size, pace = image_size(data), self._model_pace()
        if size is None or pace is None:
            return
        runs = 8 if self.params.get("quality") == "max" else 1
        seconds = runs * pace * size[0] * size[1] / 1e6
        about = f"{max(1, math.ceil(seconds))} s" if seconds < 90 else f"{seconds / 60:.0f} min"
        self.tell(f"{name}: {size[0]}x{size[1]}, about {about} of model time")

    def check_model(self) -> None:
        """Refuses, before any image is sent, a `--model` that the service does not list, rather
        than failing every file on it; says nothing when the listing cannot be read (a service
        still starting, or one that wants a key). `auto` needs no check: a service with one kind
        of model runs its default for it.

        Raises:
            UsageError: Naming the models the service has.
        """
        name = self.params.get("model")
        if not name or name == "auto":
            return
        paces = self._listed_paces()
        if paces and name not in paces:
            has = ", ".join([*paces, "auto"] if self._auto else paces)
            raise UsageError(f"the service at {self.url} has no model {name!r} (it has: {has})")

    def _listed_paces(self) -> dict[str, float | None]:
        """Each model's seconds per megapixel from GET /models, which also sets the listed
        default and `auto`; {} when the service does not say (asked again next time: a service
        may still be starting)."""
        if self._paces is None:
            try:
                listing = self.client.get(f"{self.url}/models").raise_for_status().json()
                paces = {m["name"]: m.get("seconds_per_megapixel") for m in listing["models"]}
                default, auto = listing.get("default"), listing.get("auto") or {}
            except (self._httpx.HTTPError, ValueError, LookupError, TypeError, AttributeError):
                return {}  # not reachable, not ready, wants a key, or not this service's JSON
            self._paces, self._listed_default, self._auto = paces, default, auto
        return self._paces

    def _model_pace(self) -> float | None:
        """The chosen model's seconds per megapixel (with `auto`, the slower of its two); None
        when the service does not say."""
        paces = self._listed_paces()
        name = self.params.get("model") or self._listed_default
        auto = self._auto
        names = [auto["clean"], auto["robust"]] if name == "auto" and auto else [name]
        known = [pace for each in names if (pace := paces.get(each or ""))]
        return max(known) if known else None

    def close(self) -> None:
        self.client.close()


class LocalUpscaler:
    """Runs the service's own pipeline in this process, on the engine the settings choose (as the
    service would): no server, no FastAPI. Without `--model`, the models of the models folder
    as the service would serve them, `auto` included (`service.core.choice.select`)."""

    def __init__(
        self, *, fmt: str, quality: str, model: str | None, keep_metadata: bool = False
    ) -> None:
        from service.core.pipeline import Quality
        from service.exceptions import UpscalerError
        from service.imaging.encode import OutputFormat

        self.selection = _local_selection(model)
        self.formats = (OutputFormat(fmt),)
        self.quality = Quality(quality)
        self.keep_metadata = keep_metadata
        self.error = UpscalerError
        # One image at a time through the model: it already uses every core.
        self.lock = threading.Lock()

    def upscale(self, data: bytes, name: str, progress: Progress) -> Upscaled:
        try:
            # The same checks as the service, from the header, before any pixel is decoded.
            output_format = self.selection.pipeline.choose_format(data, self.formats, self.quality)
            with self.lock:
                choice, result = self.selection.run(
                    data, output_format, self.quality, keep_metadata=self.keep_metadata
                )
        except self.error as exc:
            raise UpscaleFailedError(exc.detail) from exc
        progress(len(data))
        found = None if choice.evidence is None else ",".join(choice.found) or "none"
        return Upscaled(result.content, choice.model.name, found)

    def close(self) -> None:
        pass


def _local_selection(model: str | None) -> Any:
    """What `--local` runs: `--model` (a models-folder name or an .onnx file) alone, or the
    models folder as the service serves it (`auto` when it holds a clean and a robust model).

    Raises:
        UsageError: When the model or the folder cannot be loaded.
    """
    from service.config import Settings
    from service.core.choice import AUTO, select
    from service.core.engines import create_engine
    from service.core.registry import load_models
    from service.exceptions import UpscalerError

    settings = Settings()
    if model and model != AUTO:
        path = Path(model) if model.endswith(".onnx") else settings.models_dir / f"{model}.onnx"
        settings = Settings(model_path=path)
        missing = f"no model at {path}"
    else:
        missing = f"no models folder at {settings.models_dir}"
    where = settings.model_path if model and model != AUTO else settings.models_dir
    if not Path(where).exists():
        raise UsageError(
            f"{missing} (relative paths start from the current folder): run from the "
            "repository, or pass --model FILE.onnx"
        )
    try:
        return select(load_models(settings, create_engine), None)
    except UpscalerError as exc:
        raise UsageError(exc.detail) from exc


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
        upscaler: HttpUpscaler | LocalUpscaler | JobsUpscaler,
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
        # By the model that ran: how many images, by what `auto` found ("" when named).
        self.models: defaultdict[str, Counter[str]] = defaultdict(Counter)
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
            upscaled = self.upscaler.upscale(data, job.label, self._progress)
            if job.target is None:
                self.stdout.write(upscaled.content)
                self.stdout.flush()
            else:
                _write(job.target, upscaled.content)
        except (UpscaleFailedError, OSError) as exc:
            message = str(exc) if isinstance(exc, UpscaleFailedError) else exc.strerror or str(exc)
            with self.lock:
                self.failed.append((job.label, message))
            self.write(f"upscale: {job.label}: {message}", file=sys.stderr)
            return
        with self.lock:
            self.done.append(job)
            self.models[upscaled.model][upscaled.found or ""] += 1


# ---- the command line ---------------------------------------------------------------------------


def _shows_progress(choice: bool | None) -> bool:
    """Whether the progress bars show (`--progress`; by default, when stderr is a terminal)."""
    return sys.stderr.isatty() if choice is None else choice


def _tell(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"upscale: {message}", file=sys.stderr)  # above the bars, not through them


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked (a usage error exits with status 2)."""
    parser = argparse.ArgumentParser(
        prog="upscale",
        description="Upscale images x4 with the EDSR service (or in-process with --local).",
        epilog="Exit status: 0 all upscaled or skipped, 1 any image failed, 2 usage error.",
    )
    _add_image_arguments(parser)
    _add_service_arguments(parser)
    _add_job_arguments(parser)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.retries < 0 or args.timeout <= 0:
        parser.error("--jobs must be at least 1, --retries at least 0, --timeout positive")
    if args.job_threshold < 0:
        parser.error("--job-threshold must not be negative (0: every image goes as a job)")
    if args.resume and args.local:
        parser.error("--resume picks up jobs on a service; --local keeps none")
    return args


def _add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """What to upscale, how, and where the results go."""
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image file, folder, or - (stdin)")
    parser.add_argument(
        "-o", "--output", metavar="OUT", help="output folder (or file for one input; - for stdout)"
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="the service's default when not given: auto, which picks edsr_x4 for clean photos "
        "and edsr_x4_real for JPEG, noisy, blurred or unsmoothly resized ones and for drawings "
        "and screenshots, and says which it used; or a model "
        "name from GET /models; with --local, a models-folder name or an .onnx file",
    )
    parser.add_argument(
        "--quality", choices=["standard", "max"], default="standard", help="max: 8x slower"
    )
    parser.add_argument("--format", choices=list(MEDIA_TYPES), default="png", dest="fmt")
    parser.add_argument(
        "--metadata",
        choices=["strip", "keep"],
        default="strip",
        help="keep: the photo's EXIF and XMP (GPS included) in the output, upright (strip)",
    )
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="images at once (1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when it is a terminal)",
    )


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Which service, or none (--local), and how patiently to talk to it."""
    parser.add_argument(
        "--url",
        default=os.environ.get("UPSCALER_URL", DEFAULT_URL),
        help="the service (default: $UPSCALER_URL or %(default)s)",
    )
    parser.add_argument("--local", action="store_true", help="upscale in this process, no server")
    parser.add_argument(
        "--retries", type=int, default=5, metavar="N", help="retries on 503/connection errors (5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for one answer (600)"
    )


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Which images go as jobs, and picking up an interrupted run's."""
    parser.add_argument(
        "--job-threshold",
        type=float,
        # At 66 s per megapixel (a 2-core AVX2 CPU) a quarter of a megapixel already takes a
        # quarter of a minute: long enough to want a progress bar and to survive a lost link.
        default=0.25,
        metavar="MP",
        help="images of at least MP megapixels go as jobs, with a bar of tiles each (0.25; 0: "
        "all); used when the service keeps jobs",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="pick up the jobs an interrupted run of this command left on the service",
    )


def _upscaler(args: argparse.Namespace) -> HttpUpscaler | LocalUpscaler | JobsUpscaler:
    """What the command line asks to upscale with: this process (--local), or the service,
    large images as jobs.

    Raises:
        UsageError: When --local cannot load its model, or the service has no model --model.
    """
    # Here, not at the top: the jobs client builds on this module's HttpUpscaler.
    from service.entry.jobs_client import JobsUpscaler

    keep = args.metadata == "keep"
    if args.local:
        return LocalUpscaler(
            fmt=args.fmt, quality=args.quality, model=args.model, keep_metadata=keep
        )
    http = HttpUpscaler(
        args.url,
        fmt=args.fmt,
        quality=args.quality,
        model=args.model,
        retries=args.retries,
        timeout=args.timeout,
        # From the environment only: a key on the command line lands in shell history.
        api_key=os.environ.get("UPSCALER_API_KEY", ""),
        keep_metadata=keep,
        # A person watching the bars is told how long each image will take.
        tell=_tell if _shows_progress(args.progress) else None,
    )
    try:
        http.check_model()
    except UsageError:
        http.close()
        raise
    return JobsUpscaler(
        http,
        threshold_pixels=round(args.job_threshold * 1e6),
        resume=args.resume,
        show_progress=args.progress,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Runs the command line; returns the exit status."""
    from service.entry.jobs_client import interrupted_hint  # (not at the top: see `_upscaler`)

    args = parse_args(argv)
    if args.local:
        # Before the engine's imports start threads (`service.host.limit_malloc_arenas`).
        limit_malloc_arenas()
    try:
        jobs, problems = plan_jobs(args.inputs, args.output, args.fmt)
        upscaler = _upscaler(args)
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
        hint = interrupted_hint(upscaler)
        print(f"upscale: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    finally:
        upscaler.close()
    return _summary(runner, problems)


def _summary(runner: Runner, problems: list[tuple[str, str]]) -> int:
    """Prints what the run did and returns the exit status (1 when any image failed)."""
    failed = runner.failed + problems
    summary = f"upscale: {len(runner.done)} upscaled{_by_model(runner.models)}, "
    summary += f"{len(runner.skipped)} skipped (existing)"
    summary += f", {len(failed)} failed" + (":" if failed else "")
    print(summary, file=sys.stderr)
    for label, message in failed:
        print(f"  {label}: {message}", file=sys.stderr)
    return 1 if failed else 0


#: What `auto` found, in the summary's words.
_FOUND_WORDS = {
    "none": "clean",
    "jpeg": "JPEG",
    "webp": "WebP",
    "noise": "noise",
    "aliasing": "aliasing",
    "blur": "blur",
    "hard-edges": "hard edges",
    "flat": "flat colour",
    "noiseless": "no noise",
}


def _by_model(models: Mapping[str, Counter[str]]) -> str:
    """` (edsr_x4_real 2: JPEG 1, noise 1; edsr_x4 1: clean)`; "" when no model was named."""
    parts = []
    for name, findings in sorted(models.items(), key=lambda item: -item[1].total()):
        if not name:
            continue
        why = ", ".join(
            f"{' + '.join(_FOUND_WORDS.get(f, f) for f in found.split(','))} {count}"
            for found, count in findings.most_common()
            if found
        )
        parts.append(f"{name} {findings.total()}" + (f": {why}" if why else ""))
    return f" ({'; '.join(parts)})" if parts else ""


if __name__ == "__main__":
    sys.exit(main())
