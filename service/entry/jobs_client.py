"""The `upscale` command's jobs: large images go to the service as jobs, with a progress bar of
tiles per file, and `--resume` picks up the jobs an interrupted run left.

A job's ID is derived from the image, the options and, without an API key, who runs the
command (`job_id_for`, `cli_owner`), so a run that was interrupted (Ctrl-C, a lost connection,
a laptop put to sleep) finds its jobs again: the same command with `--resume`, from the same
login on the same machine (or with the same key), reuses each job the service still has
(running, or done and waiting to be downloaded) instead of uploading and computing it again.
Another person sending the same image to a shared service without keys gets another ID, so
neither run can take over or delete the other's job (with keys the service keeps each key's
jobs apart). Without `--resume`, a job that an earlier run left is started over (the service's
model may have changed since). Within one run, a lost connection is retried and the job's
events followed again, never resubmitted: a PUT whose answer was lost is sent again, and the
service's 200 (it has the job) is then this run's own job, not an earlier run's; and identical
images (one job ID) share one job.

Smaller images (under `--job-threshold` megapixels) go to `POST /upscale` as before, and so
does everything when the service keeps no jobs (its 404 says so).
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import mimetypes
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx

from service.entry.client import (
    FIRST_BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    MEDIA_TYPES,
    HttpUpscaler,
    Progress,
    Upscaled,
    UpscaleFailedError,
    _detail,
    _retry_after,
)

#: The service's detail when it keeps no jobs starts with this.
_NO_JOBS = "this service keeps no jobs"


def cli_owner() -> str:
    """Who runs the command: the login and the machine. Without keys every client shares one
    namespace of job IDs, and an ID from the image alone would let one person's run delete
    another's job; hashed into the ID, this is never sent as such."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name (a container's bare user ID)
        user = str(os.getuid()) if hasattr(os, "getuid") else ""
    return f"{user}@{socket.gethostname()}"


def job_id_for(data: bytes, params: dict[str, str], fmt: str, owner: str) -> str:
    """The ID of this image's job with these options for this owner: the same on every run."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps([sorted(params.items()), fmt, owner]).encode())
    return "cli-" + digest.hexdigest()[:40]


def image_pixels(data: bytes) -> int | None:
    """Width x height from the header; None when it is not an image Pillow reads (the service
    will say what is wrong with it)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width * image.height
    except Exception:
        return None


class JobsUpscaler:
    """Large images through the service's jobs, the others through `HttpUpscaler`.

    Args:
        http: The client of `POST /upscale`, whose connection, options and retries are shared.
        threshold_pixels: Images of at least this many pixels become jobs.
        resume: Reuse the jobs an earlier run left instead of starting them over.
        show_progress: One bar of tiles per file (None: when stderr is a terminal).
    """

    def __init__(
        self,
        http: HttpUpscaler,
        *,
        threshold_pixels: int,
        resume: bool,
        show_progress: bool | None,
    ) -> None:
        self.http = http
        self.threshold_pixels = threshold_pixels
        self.resume = resume
        self.show_progress = show_progress
        # With a key the service keeps each key's jobs apart, and the same key resumes from
        # any machine; without one, the owner keeps people apart.
        self.owner = "" if http.keyed else cli_owner()
        self.jobs_off = False
        #: Jobs of this run not yet downloaded (what Ctrl-C leaves on the service).
        self.unfinished: set[str] = set()
        #: Jobs this run has put on the service: a 200 for one of them is never an earlier
        #: run's job to start over.
        self._ours: set[str] = set()
        #: The result of each job in hand, for identical images (the same job ID) that come
        #: while it runs: they wait for it instead of deleting and resubmitting it.
        self._in_hand: dict[str, Future[Upscaled]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def upscale(self, data: bytes, name: str, progress: Progress) -> Upscaled:
        """Large images as jobs, one job per distinct image and options; the others directly."""
        pixels = image_pixels(data)
        if self.jobs_off or pixels is None or pixels < self.threshold_pixels:
            return self.http.upscale(data, name, progress)
        job_id = job_id_for(data, self.http.params, self.http.fmt, self.owner)
        with self._lock:
            shared = self._in_hand.get(job_id)
            if shared is None:
                self._in_hand[job_id] = mine = Future()
        if shared is not None:
            upscaled = shared.result()  # (or its error)
            progress(len(data))
            return upscaled
        try:
            upscaled = self._job(job_id, data, name, progress)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(upscaled)
        finally:
            with self._lock:
                del self._in_hand[job_id]
        return upscaled

    def _job(self, job_id: str, data: bytes, name: str, progress: Progress) -> Upscaled:
        """One image as a job (or by `POST /upscale` when the service keeps none)."""
        with self._lock:
            self.unfinished.add(job_id)
        if not self._submit(job_id, data, name):
            with self._lock:
                self.unfinished.discard(job_id)
            return self.http.upscale(data, name, progress)
        progress(len(data))
        content = self._follow(job_id, name)
        with self._lock:
            self.unfinished.discard(job_id)
        return content

    # --- HTTP with the retries of `HttpUpscaler` -----------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request, retried on connection errors (doubling back-off) and 503s."""
        return self._send(method, path, **kwargs)[0]

    def _send(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bool]:
        """`_request`, and whether a connection error made it send again (the request that
        failed may have reached the service all the same: only its answer was lost)."""
        http = self.http
        resent = False
        for attempt in range(http.retries + 1):
            try:
                response = http.client.request(method, f"{http.url}{path}", **kwargs)
            except httpx.TransportError as exc:
                if attempt == http.retries:
                    message = f"cannot reach the service at {http.url}: {exc}"
                    raise UpscaleFailedError(message) from exc
                resent = True
                http.sleep(min(FIRST_BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS))
                continue
            if response.status_code == 503 and attempt < http.retries:
                http.sleep(_retry_after(response.headers.get("retry-after")))
                continue
            return response, resent
        raise AssertionError("unreachable")  # pragma: no cover

    def _submit(self, job_id: str, data: bytes, name: str) -> bool:
        """Puts the job on the service (or finds it there); False when it keeps no jobs."""
        media_type = mimetypes.guess_type(name)[0] or ""
        headers = {
            "Accept": MEDIA_TYPES[self.http.fmt],
            "Content-Type": media_type if media_type.startswith("image/") else "image/png",
        }

        def put() -> tuple[Any, bool]:
            params = self.http.params
            return self._send(
                "PUT", f"/jobs/{job_id}", content=data, params=params, headers=headers
            )

        response, resent = put()
        with self._lock:
            ours = job_id in self._ours
        if response.status_code == 200 and not (self.resume or resent or ours):
            # An earlier run left this job: start it over (the model may have changed since).
            # Not when it may be this run's own: a PUT sent again after its answer was lost.
            self._request("DELETE", f"/jobs/{job_id}")
            response, _ = put()
        if response.status_code == 404 and _detail(response).startswith(_NO_JOBS):
            self.jobs_off = True
            return False
        if response.status_code not in (200, 202):
            raise UpscaleFailedError(f"{response.status_code}: {_detail(response)}")
        with self._lock:
            self._ours.add(job_id)
        return True

    def _follow(self, job_id: str, name: str) -> Upscaled:
        """Follows the job's events until it ends (reconnecting), then downloads the result."""
        from tqdm import tqdm

        disable = None if self.show_progress is None else not self.show_progress
        with tqdm(desc=name, unit="tile", leave=False, disable=disable) as bar:
            job = self._watch(job_id, bar)
        status = job["status"]
        if status == "canceled":
            raise UpscaleFailedError(f"the job was canceled ({job.get('detail')})")
        if status == "failed":
            raise UpscaleFailedError(str(job.get("detail") or "the job failed"))
        answer = self._request(
            "GET", f"/jobs/{job_id}/result", headers={"Accept": MEDIA_TYPES[self.http.fmt]}
        )
        if answer.status_code != 200:
            raise UpscaleFailedError(f"{answer.status_code}: {_detail(answer)}")
        self._request("DELETE", f"/jobs/{job_id}")  # downloaded: the service need not keep it
        return Upscaled.from_headers(bytes(answer.content), answer.headers)

    def _watch(self, job_id: str, bar: Any) -> dict[str, Any]:
        http = self.http
        failures = 0
        while True:
            try:
                for job in self._events(job_id):
                    _show(bar, job)
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        return job
                failures = 0  # the stream ended early (the service drained): reconnect
            except httpx.TransportError as exc:
                failures += 1
                if failures > http.retries:
                    raise UpscaleFailedError(
                        f"lost the service at {http.url} ({exc}); the job keeps running "
                        "there: run the same command with --resume to pick it up"
                    ) from exc
            http.sleep(min(FIRST_BACKOFF_SECONDS * 2**failures, MAX_BACKOFF_SECONDS))

    def _events(self, job_id: str) -> Iterator[dict[str, Any]]:
        http = self.http
        with http.client.stream("GET", f"{http.url}/jobs/{job_id}/events") as response:
            if response.status_code != 200:
                response.read()
                raise UpscaleFailedError(f"{response.status_code}: {_detail(response)}")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[len("data: ") :])


def _show(bar: Any, job: dict[str, Any]) -> None:
    done, total = job["progress"]["tiles_done"], job["progress"]["tiles_total"]
    if total and bar.total != total:
        bar.reset(total=total)
    if done is not None:
        bar.n = done
    position = job.get("queue_position")
    bar.set_postfix_str(f"queued #{position}" if position else job["status"], refresh=False)
    bar.refresh()


def interrupted_hint(upscaler: object) -> str | None:
    """What Ctrl-C leaves behind, for the message; None when no job is unfinished."""
    if isinstance(upscaler, JobsUpscaler) and upscaler.unfinished:
        count = len(upscaler.unfinished)
        return (
            f"{count} job(s) keep running on the service; the same command with --resume "
            "picks them up"
        )
    return None
