"""The durable job store: one SQLite file of records and a folder of files per job.

Layout of UPSCALER_JOBS_DIR:

    jobs.sqlite3            the records (WAL journal, synchronous=FULL: a commit is on disk)
    lock                    held (flock) by the one process using the folder
    files/KEY/input         the uploaded (or fetched) image, while the job is queued or running
    files/KEY/result        the encoded result, from success until it expires

`KEY` is a random name of the service's; the ID a client sees is unique per owner (the API
key's digest), so two keys may use the same ID and neither learns of the other's job.

Crash safety, in the order things are written:

- submit: the job's folder is created and `files/` fsynced, the input is written (temporary
  file, fsync, rename, fsync of the folder) before its record is committed; a crash between
  leaves a folder without record, removed at start.
- success: the result is written the same way while the record still says `running`, then
  the record is committed `succeeded`; a crash between leaves a `running` record, which runs
  again at start and writes the result anew. No reader ever sees half a result.
- start-up (`recover`): `running` records were cut short by the crash: they are queued again,
  unless they had already been started `MAX_STARTS` times (the job itself may be what kills
  the process), in which case they fail with a detail that says so.

The store is synchronous and thread-safe: writes go through one connection behind a lock,
held across each commit's fsync; reads through a second connection with its own lock, so that
they never wait for a write (WAL lets a reader see the last commit while a writer works).
`JobService` calls it from worker threads for writes and from the event loop for reads.

One process at a time: the store holds an exclusive `flock` on `lock` while open, since a second
process's recovery would requeue the first one's running jobs and delete its uncommitted
folders.

Size cap: an unfinished job counts its input and an upper bound of its result
(`NewJob.result_bound`), replaced by the result's real size when it succeeds, so results
written later cannot push the folder past `max_bytes`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.exceptions import (
    JobConflictError,
    JobNotFoundError,
    JobStoreFullError,
    ResultExpiredError,
    ResultNotReadyError,
    SettingsError,
)
from service.host import atomic_path
from service.imaging.decode import max_icc_profile_bytes
from service.imaging.metadata import MAX_EXIF_BYTES, MAX_XMP_BYTES

logger = logging.getLogger(__name__)

DB_NAME = "jobs.sqlite3"
LOCK_NAME = "lock"
FILES = "files"
INPUT = "input"
RESULT = "result"
#: A job started this many times whose process died each time is failed, not run again.
MAX_STARTS = 2
#: How long a job's record outlives its expired result (410 until then, 404 after).
FORGET_AFTER_SECONDS = 24 * 3600.0
#: `PRAGMA user_version` of the database: 1 had no `reserved_bytes` (added on open), 2 now.
SCHEMA_VERSION = 2
#: The scale the unfinished jobs of a version 1 database are given their reservation with: they
#: did not record their model's, and every shipped model is x4.
LEGACY_OUTPUT_SCALE = 4
#: Most bytes an encoded result takes per output pixel: 8-bit RGBA stored uncompressed (PNG at
#: level 0, lossless WebP on noise) is 4, plus PNG's filter byte per row and deflate's block
#: headers; JPEG (4:2:0 chroma, as Pillow writes it) stays near 2 even at quality 100 on noise.
RESULT_BYTES_PER_PIXEL = {"image/png": 4.1, "image/webp": 4.1, "image/jpeg": 2.5}
#: Room beside the pixels and the metadata for a result's own headers and chunks.
RESULT_HEADER_BYTES = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    quality TEXT NOT NULL,
    media_type TEXT NOT NULL,
    keep_metadata INTEGER NOT NULL DEFAULT 0,
    input_bytes INTEGER NOT NULL,
    input_width INTEGER NOT NULL,
    input_height INTEGER NOT NULL,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    reserved_bytes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    expired REAL,
    detail TEXT,
    facts TEXT NOT NULL DEFAULT '{}',
    webhook TEXT,
    webhook_events TEXT NOT NULL DEFAULT '[]',
    webhook_state TEXT NOT NULL DEFAULT '{}',
    UNIQUE (owner, id)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""


class JobStatus(enum.StrEnum):
    """Where a job stands (`status` of `GET /jobs/{id}`)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (it never changes status again)."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
#: Bytes the folder holds or may soon hold: the inputs of unfinished jobs (deleted once a job
#: ends) with the room reserved for their results, and the results kept.
_USED_BYTES = (
    "SELECT COALESCE(SUM(CASE WHEN status IN (?, ?) THEN input_bytes + reserved_bytes ELSE 0 "
    "END), 0) + COALESCE(SUM(result_bytes), 0) FROM jobs"
)


def result_bound(width: int, height: int, scale: int, media_type: str, keep_metadata: bool) -> int:
    """Most bytes the encoded result of a `width` x `height` input can take.

    Besides the pixels, the input's ICC profile (as large as the decoder lets one inflate: a
    compressed one in a small input can take more room in the result) and, with
    `metadata=keep`, its EXIF and XMP at their largest.
    """
    pixels = width * height * scale**2
    extra = max_icc_profile_bytes() + RESULT_HEADER_BYTES
    if keep_metadata:
        extra += MAX_EXIF_BYTES + MAX_XMP_BYTES
    return math.ceil(pixels * RESULT_BYTES_PER_PIXEL[media_type]) + extra


@dataclass(frozen=True)
class NewJob:
    """A job to submit: its input and what to do with it.

    Attributes:
        owner: Digest of the API key that submits it ("" without keys).
        id: The client's ID (`PUT /jobs/{id}`), or None for a generated one.
        data: The image file.
        model: The model's name ("" for the default one).
        quality: `standard` or `max`.
        media_type: The output format, chosen from the submit's Accept header.
        input_width, input_height: The image's size (from its header).
        output_scale: The model's factor (output pixels per input pixel, per side).
        keep_metadata: `metadata=keep`: the output carries the input's EXIF and XMP.
        webhook: URL to tell of the job's events, or None.
        webhook_events: Which events (`start`, `completed`).
    """

    owner: str
    id: str | None
    data: bytes
    model: str
    quality: str
    media_type: str
    input_width: int
    input_height: int
    output_scale: int
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    keep_metadata: bool = False

    @property
    def result_bound(self) -> int:
        """Most bytes the encoded result can take: its room in the size cap until it exists
        (`result_bound`)."""
        return result_bound(
            self.input_width,
            self.input_height,
            self.output_scale,
            self.media_type,
            self.keep_metadata,
        )

    @property
    def fingerprint(self) -> str:
        """What makes two submits of one ID the same job: the input and every parameter."""
        digest = hashlib.sha256(self.data)
        params = [self.model, self.quality, self.media_type, self.webhook or "", self.keep_metadata]
        digest.update(json.dumps([params, sorted(self.webhook_events)]).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class JobRecord:
    """One job as stored (see the schema); times are Unix seconds."""

    seq: int
    key: str
    owner: str
    id: str
    status: JobStatus
    fingerprint: str
    model: str
    quality: str
    media_type: str
    keep_metadata: bool
    input_bytes: int
    input_width: int
    input_height: int
    result_bytes: int
    reserved_bytes: int
    attempts: int
    created: float
    started: float | None
    finished: float | None
    expired: float | None
    detail: str | None
    facts: Mapping[str, Any] = field(default_factory=dict)
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    webhook_state: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values["status"] = JobStatus(values["status"])
        values["keep_metadata"] = bool(values["keep_metadata"])
        values["facts"] = json.loads(values["facts"])
        values["webhook_events"] = tuple(json.loads(values["webhook_events"]))
        values["webhook_state"] = json.loads(values["webhook_state"])
        return cls(**values)


@dataclass(frozen=True)
class Recovery:
    """What `JobStore` found at start: jobs queued again, jobs failed, folders removed."""

    requeued: int = 0
    failed: int = 0
    orphans: int = 0


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once the folder's entry is on disk too.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions (the writer's are explicit, and each of
    # the reader's SELECTs sees the last commit).
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def _lock_folder(folder: Path) -> int:
    """Takes the folder for this process (an exclusive `flock` on its `lock` file, released
    when the descriptor is closed, or the process dies) and returns the descriptor.

    Raises:
        SettingsError: Another process holds it.
    """
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SettingsError(
            f"UPSCALER_JOBS_DIR {folder} is in use by another process (it holds "
            f"{folder / LOCK_NAME}); each service process needs a jobs folder of its own"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def durable_write(path: Path, data: bytes) -> None:
    """Writes `data` to `path` atomically (`atomic_path`) and durably (fsync of the file
    before the rename, and of its folder after)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    _fsync_dir(path.parent)


class JobStore:
    """The records and files of every job (see the module docstring).

    Args:
        folder: UPSCALER_JOBS_DIR (created if missing).
        retention_seconds: How long results are kept after the job ends.
        max_bytes: Size cap of inputs and results; past it, `submit` refuses.
        clock: Wall-clock time in Unix seconds (tests move it forward).

    Raises:
        SettingsError: If another process uses the folder, or a newer service wrote its
            database.
        OSError, sqlite3.Error: If the folder or the database cannot be opened.
    """

    def __init__(
        self,
        folder: Path,
        *,
        retention_seconds: float,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.retention_seconds = retention_seconds
        self.max_bytes = max_bytes
        self.clock = clock
        self._files = folder / FILES
        self._files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        with contextlib.ExitStack() as undo:  # what is open so far, if opening fails
            self._lock_fd = _lock_folder(folder)
            undo.callback(os.close, self._lock_fd)  # (closing it releases the flock)
            self._db = _connect(folder / DB_NAME)
            undo.callback(self._db.close)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._open_schema()
            self._reader = _connect(folder / DB_NAME)
            undo.callback(self._reader.close)
            self._reader.execute("PRAGMA query_only=1")
            self.recovered = self._recover()
            undo.pop_all()

    def close(self) -> None:
        """Closes the database (after any write in progress) and lets the folder go."""
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
        os.close(self._lock_fd)

    # --- internals --------------------------------------------------------------------------

    def _open_schema(self) -> None:
        """Creates the table, or brings an older one up to `SCHEMA_VERSION`.

        Raises:
            SettingsError: The database comes from a newer version of the service.
        """
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SettingsError(
                f"{self.folder / DB_NAME} has schema version {version}, newer than this "
                f"service's {SCHEMA_VERSION}: a newer version of the service wrote it; run that "
                "one, or give this one another UPSCALER_JOBS_DIR"
            )
        self._db.executescript(_SCHEMA)  # IF NOT EXISTS: creates a new database only
        with self._transaction() as db:
            # Decided from the table, not from `user_version`: a version 1 service run on a
            # version 2 database (a rollback) sets it back to 1 over the column it lacks.
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "reserved_bytes" not in columns:  # before results reserved their room
                db.execute("ALTER TABLE jobs ADD COLUMN reserved_bytes INTEGER NOT NULL DEFAULT 0")
                self._reserve_unfinished(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @staticmethod
    def _reserve_unfinished(db: sqlite3.Connection) -> None:
        """Gives the unfinished jobs of an older database the room for their results that
        new ones reserve at submit, so that the size cap holds for them too."""
        rows = db.execute(
            "SELECT key, input_width, input_height, media_type, keep_metadata FROM jobs "
            "WHERE status IN (?, ?)",
            _UNFINISHED,
        ).fetchall()
        db.executemany(
            "UPDATE jobs SET reserved_bytes=? WHERE key=?",
            [
                (
                    result_bound(
                        row["input_width"],
                        row["input_height"],
                        LEGACY_OUTPUT_SCALE,
                        row["media_type"],
                        bool(row["keep_metadata"]),
                    ),
                    row["key"],
                )
                for row in rows
            ],
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> JobRecord | None:
        with self._read_lock:
            row = self._reader.execute(sql, args).fetchone()
        return None if row is None else JobRecord.from_row(row)

    def job_folder(self, key: str) -> Path:
        return self._files / key

    def result_path(self, record: JobRecord) -> Path:
        return self.job_folder(record.key) / RESULT

    def _remove_input(self, key: str) -> None:
        (self.job_folder(key) / INPUT).unlink(missing_ok=True)

    def _recover(self) -> Recovery:
        now = self.clock()
        detail = (
            f"the service stopped {MAX_STARTS} times while this job ran (a crash, a kill or "
            "running out of memory); it is not run again"
        )
        with self._transaction() as db:
            failed = db.execute(
                "UPDATE jobs SET status=?, detail=?, finished=? WHERE status=? AND attempts>=?",
                (JobStatus.FAILED, detail, now, JobStatus.RUNNING, MAX_STARTS),
            ).rowcount
            requeued = db.execute(
                "UPDATE jobs SET status=?, started=NULL WHERE status=?",
                (JobStatus.QUEUED, JobStatus.RUNNING),
            ).rowcount
            rows = db.execute("SELECT key, status FROM jobs").fetchall()
        known = {row["key"]: JobStatus(row["status"]) for row in rows}
        orphans = 0
        for path in self._files.iterdir():
            status = known.get(path.name)
            if status is None:
                # A submit cut short before its commit, or a job deleted mid-write.
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
                orphans += 1
            elif status.terminal:
                self._remove_input(path.name)
        if failed or requeued or orphans:
            logger.warning(
                "jobs: %d interrupted job(s) queued again, %d failed after %d starts, "
                "%d unfinished folder(s) removed",
                requeued,
                failed,
                MAX_STARTS,
                orphans,
            )
        return Recovery(requeued=requeued, failed=failed, orphans=orphans)

    # --- submit ------------------------------------------------------------------------------

    def _full_error(self, db: sqlite3.Connection, needed: int) -> JobStoreFullError:
        # Retry-After: when the oldest result kept expires and frees its bytes.
        oldest = db.execute(
            "SELECT MIN(finished) FROM jobs WHERE result_bytes > 0 AND finished IS NOT NULL"
        ).fetchone()[0]
        wait = self.retention_seconds if oldest is None else oldest + self.retention_seconds
        seconds = max(1, math.ceil(wait - self.clock() if oldest is not None else wait))
        return JobStoreFullError(
            f"the jobs folder is full ({self.max_bytes} bytes, UPSCALER_JOBS_MAX_BYTES; this "
            f"job needs {needed}: its input, and room for its result until it exists); results "
            f"expire after {self.retention_seconds:g} s, or DELETE /jobs/ID frees a finished "
            "job's now",
            seconds,
        )

    def submit(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Stores a job, or finds the one this owner already has under `new.id`.

        The input is written before the record is committed (see the module docstring).

        Returns:
            The job, and whether it was created (False: the same ID and input existed).

        Raises:
            JobConflictError: The ID exists with another input or other parameters.
            JobStoreFullError: The folder holds `max_bytes` already.
        """
        key = uuid.uuid4().hex
        folder = self.job_folder(key)
        try:
            folder.mkdir()
            _fsync_dir(self._files)  # the folder's own entry, before anything relies on it
            durable_write(folder / INPUT, new.data)
            record, created = self._insert(key, new)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JobStoreFullError(
                    "the disk of the jobs folder is full", math.ceil(self.retention_seconds)
                ) from exc
            raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not created:  # the job existed: this copy of its input is not needed
            shutil.rmtree(folder, ignore_errors=True)
        return record, created

    def _insert(self, key: str, new: NewJob) -> tuple[JobRecord, bool]:
        job_id = new.id or uuid.uuid4().hex
        fingerprint = new.fingerprint
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE owner=? AND id=?", (new.owner, job_id)
            ).fetchone()
            if row is not None:
                if row["fingerprint"] != fingerprint:
                    raise JobConflictError(
                        f"job {job_id!r} exists with another input or other parameters; "
                        "choose another ID, or DELETE /jobs/ID first"
                    )
                return JobRecord.from_row(row), False
            used = db.execute(_USED_BYTES, _UNFINISHED).fetchone()[0]
            reserved = new.result_bound
            if used + len(new.data) + reserved > self.max_bytes:
                raise self._full_error(db, len(new.data) + reserved)
            db.execute(
                "INSERT INTO jobs (key, owner, id, status, fingerprint, model, quality, "
                "media_type, keep_metadata, input_bytes, reserved_bytes, input_width, "
                "input_height, created, webhook, webhook_events) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    new.owner,
                    job_id,
                    JobStatus.QUEUED,
                    fingerprint,
                    new.model,
                    new.quality,
                    new.media_type,
                    int(new.keep_metadata),
                    len(new.data),
                    reserved,
                    new.input_width,
                    new.input_height,
                    self.clock(),
                    new.webhook,
                    json.dumps(list(new.webhook_events)),
                ),
            )
            row = db.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone()
        return JobRecord.from_row(row), True

    # --- reads ---------------------------------------------------------------------------------

    def get(self, owner: str, job_id: str) -> JobRecord:
        """The owner's job `job_id`.

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        record = self._one("SELECT * FROM jobs WHERE owner=? AND id=?", owner, job_id)
        if record is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return record

    def by_key(self, key: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE key=?", key)

    def queue_position(self, record: JobRecord) -> int | None:
        """1 for the next job to run, 2 for the one after...; None unless queued."""
        if record.status is not JobStatus.QUEUED:
            return None
        with self._read_lock:
            ahead = self._reader.execute(
                "SELECT COUNT(*) FROM jobs WHERE status=? AND seq<?",
                (JobStatus.QUEUED, record.seq),
            ).fetchone()[0]
        return int(ahead) + 1

    def read_input(self, record: JobRecord) -> bytes:
        return (self.job_folder(record.key) / INPUT).read_bytes()

    def result_file(self, record: JobRecord) -> Path:
        """The result's file, once the job succeeded and until it expires.

        Raises:
            ResultExpiredError: After the retention time.
            ResultNotReadyError: Before success, or when the job failed or was canceled.
        """
        if record.status is not JobStatus.SUCCEEDED:
            raise ResultNotReadyError(
                f"job {record.id!r} has no result: it is {record.status.value}"
            )
        expires = (record.finished or 0.0) + self.retention_seconds
        if record.expired is not None or self.clock() >= expires:
            # Past its time it is refused at once, even before the next sweep deletes it.
            raise ResultExpiredError(
                f"the result of job {record.id!r} was deleted after "
                f"{self.retention_seconds:g} s (UPSCALER_JOB_RETENTION_SECONDS)"
            )
        return self.result_path(record)

    # --- changes -------------------------------------------------------------------------------

    def peek_next(self) -> JobRecord | None:
        """The oldest queued job (the next `claim_next`, unless another worker is quicker)."""
        return self._one("SELECT * FROM jobs WHERE status=? ORDER BY seq LIMIT 1", JobStatus.QUEUED)

    def claim_next(self) -> JobRecord | None:
        """Marks the oldest queued job running (one more start) and returns it; None if none."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT key FROM jobs WHERE status=? ORDER BY seq LIMIT 1", (JobStatus.QUEUED,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status=?, attempts=attempts+1, started=? WHERE key=?",
                (JobStatus.RUNNING, self.clock(), row["key"]),
            )
            claimed = db.execute("SELECT * FROM jobs WHERE key=?", (row["key"],)).fetchone()
        return JobRecord.from_row(claimed)

    def succeed(self, key: str, content: bytes, facts: Mapping[str, Any]) -> bool:
        """Stores a running job's result, then marks it succeeded and drops its input.

        Returns:
            False if the job was canceled or deleted meanwhile (the result is not kept).
        """
        path = self.job_folder(key) / RESULT
        try:
            durable_write(path, content)
        except FileNotFoundError:  # deleted while it ran: its folder is gone
            return False
        with self._transaction() as db:
            row = db.execute("SELECT id, reserved_bytes FROM jobs WHERE key=?", (key,)).fetchone()
            done = db.execute(
                "UPDATE jobs SET status=?, finished=?, result_bytes=?, facts=? "
                "WHERE key=? AND status=?",
                (
                    JobStatus.SUCCEEDED,
                    self.clock(),
                    len(content),
                    json.dumps(dict(facts)),
                    key,
                    JobStatus.RUNNING,
                ),
            ).rowcount
        if done:
            self._remove_input(key)
            if len(content) > row["reserved_bytes"]:
                # The bound is meant to hold for every result: one over it shows it is wrong
                # (the folder may then pass the cap by the difference).
                logger.warning(
                    "jobs: the result of job %s takes %d bytes, more than the %d reserved for "
                    "it; the bound (result_bound) is wrong",
                    row["id"],
                    len(content),
                    row["reserved_bytes"],
                )
        else:
            path.unlink(missing_ok=True)
        return bool(done)

    def settle(self, key: str, status: JobStatus, detail: str) -> bool:
        """Ends an unfinished job as failed or canceled, with the reason; drops its input.

        Returns:
            False if it had ended already (or is gone).
        """
        with self._transaction() as db:
            done = db.execute(
                "UPDATE jobs SET status=?, detail=?, finished=? WHERE key=? AND status IN (?, ?)",
                (status, detail, self.clock(), key, *_UNFINISHED),
            ).rowcount
        if done:
            self._remove_input(key)
        return bool(done)

    def requeue(self, key: str) -> None:
        """Puts a running job back in the queue, uncounted (the service is stopping)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status=?, started=NULL, attempts=MAX(attempts-1, 0) "
                "WHERE key=? AND status=?",
                (JobStatus.QUEUED, key, JobStatus.RUNNING),
            )

    def cancel(self, owner: str, job_id: str) -> tuple[JobRecord, bool]:
        """Cancels the owner's job if it has not ended (a running one stops at its next tile:
        `JobService` tells it); an ended job is returned as it is.

        Returns:
            The job as it is now, and whether this call ended it (False: it had ended, or
            another cancel or its own end came first).

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        record = self.get(owner, job_id)
        canceled = not record.status.terminal and self.settle(
            record.key, JobStatus.CANCELED, "canceled by the client"
        )
        return self.get(owner, job_id), canceled

    def delete(self, owner: str, job_id: str) -> JobRecord:
        """Removes the owner's job, its record and its files.

        Raises:
            JobNotFoundError: If the owner has no such job.
        """
        record = self.get(owner, job_id)
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE key=?", (record.key,))
        shutil.rmtree(self.job_folder(record.key), ignore_errors=True)
        return record

    def expire(self) -> tuple[int, int]:
        """Deletes results older than the retention time and forgets jobs whose result expired
        more than `FORGET_AFTER_SECONDS` ago.

        Returns:
            (results deleted, jobs forgotten).
        """
        now = self.clock()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT key FROM jobs WHERE finished IS NOT NULL AND expired IS NULL "
                "AND finished<=?",
                (now - self.retention_seconds,),
            ).fetchall()
            db.executemany(
                "UPDATE jobs SET expired=?, result_bytes=0 WHERE key=?",
                [(now, row["key"]) for row in rows],
            )
            gone = db.execute(
                "DELETE FROM jobs WHERE expired IS NOT NULL AND expired<=? RETURNING key",
                (now - FORGET_AFTER_SECONDS,),
            ).fetchall()
        # Files go after the commit: a crash between leaves files the next start removes.
        for row in [*rows, *gone]:
            shutil.rmtree(self.job_folder(row["key"]), ignore_errors=True)
        return len(rows), len(gone)

    def set_webhook_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Records how the job's webhook deliveries went."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET webhook_state=? WHERE key=?", (json.dumps(dict(state)), key)
            )

    def undelivered(self) -> list[JobRecord]:
        """Ended jobs whose terminal webhook is still to be delivered (the process stopped)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT * FROM jobs WHERE webhook IS NOT NULL AND status IN (?, ?, ?) "
                "AND COALESCE(json_extract(webhook_state, '$.completed.status'), 'retrying') "
                "= 'retrying' AND webhook_events LIKE '%completed%' ORDER BY seq",
                (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED),
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]
