"""Hot model reload: changed, added and removed model files, swapped in without a restart.

`ModelReloader.run` is a task of the models' lifecycle (`service.core.lifecycle`), started once
the start-up warm-up is done; SIGHUP is handled here only (`install_sighup`, `ignore_sighup`).
It checks the served files every `UPSCALER_RELOAD_INTERVAL_SECONDS` (0: never by itself) and at
once on SIGHUP (`request_check`). A check stats each model's files (`registry.signature`: the
ONNX file, its fp16 copy and its card); only a model whose files changed is touched:

- **Changed or added** (of the models `UPSCALER_MODELS` names, when it names some): in a worker
  thread, the file is hashed (its version), loaded by the app's engine factory (which checks the
  export contract), and warmed up, beside the serving model; then the registry is replaced in
  one assignment (`ModelLifecycle.swap`). A request takes its model from the registry once, at
  its start, so requests in flight finish on the model they started on. When the ONNX file's
  content (and its fp16 copy) did not change (a touch, a new card), only the card is read
  again: no engine is loaded.
- **Refused**: a model that fails to load or warm up (a half-copied file, a broken export) is
  not swapped in. The reason goes to the log and to `/readyz` (`reload_errors`), the served
  version keeps serving, and the same files are not retried until they change again. A file
  that changes while it is being loaded is retried at the next check (or after a second).
- **Removed**: a model other than the default is dropped from the registry (`GET /models` and
  `?model=` follow the folder). The default model (and the one file of UPSCALER_MODEL_PATH)
  keeps serving the version loaded, with a note in `reload_errors`, since the service cannot
  run without it.

Bounded memory: models are reloaded one after the other, and before loading the next one the
reloader waits (up to `release_timeout` seconds) until the engine it replaced is gone, i.e.
until the requests that still used it have finished. So at most one extra model is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from service.config import Settings
from service.core.registry import (
    FileSignature,
    ServedModel,
    content_version,
    folder_models,
    load_model,
    selected_models,
    serves_single_file,
    signature,
    with_card,
)

if TYPE_CHECKING:
    from service.core.lifecycle import ModelLifecycle

logger = logging.getLogger(__name__)

#: Delay before retrying a file that changed while it was being loaded.
_SETTLE_SECONDS = 1.0


class _StillChangingError(Exception):
    """The file changed while it was loaded: a copy in progress, retried later."""


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did, for the log and for measurements.

    Attributes:
        name: The model.
        outcome: `loaded` (new engine), `card` (same engine, card read again), `failed`,
            `dropped`, `kept` (removed file of a model that must stay), `changing`.
        version: The version now served (or refused, for `failed`).
        seconds: Time to load and warm up (0 for card-only reloads).
        detail: The reason, for `failed` and `kept`.
    """

    name: str
    outcome: str
    version: str = ""
    seconds: float = 0.0
    detail: str = ""


class ModelReloader:
    """Watches the served model files and swaps changed models in (see the module docstring).

    Build it inside the running event loop (the app's lifespan).
    """

    def __init__(self, lifecycle: ModelLifecycle, *, release_timeout: float = 120.0) -> None:
        self.lifecycle = lifecycle
        self.release_timeout = release_timeout
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._refused: dict[str, FileSignature] = {}
        self._retired: weakref.ref[Any] | None = None
        self._sighup = False

    @property
    def settings(self) -> Settings:
        return self.lifecycle.settings

    # --- triggers ----------------------------------------------------------------------------

    def request_check(self) -> None:
        """Asks for a check now; callable from any thread and from signal handlers."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def install_sighup(self) -> bool:
        """Makes SIGHUP request a check; only possible from the main thread's event loop."""
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError):
            return False
        self._sighup = True
        return True

    def remove_sighup(self) -> None:
        if self._sighup:
            self._loop.remove_signal_handler(signal.SIGHUP)
            # asyncio restores the default action, which ends the process: a SIGHUP during
            # shutdown must not.
            ignore_sighup()
            self._sighup = False

    def _on_sighup(self) -> None:
        logger.info("SIGHUP: checking the model files now")
        self._wake.set()

    async def run(self, interval: float) -> None:
        """Checks every `interval` seconds (0: only when asked) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            self._wake.clear()
            try:
                await self.check()
            except Exception:
                # The watcher must outlive any surprise; the next check tries again.
                logger.exception("model check failed")

    # --- one check ---------------------------------------------------------------------------

    async def check(self) -> list[ReloadResult]:
        """Compares the files with the served models and reloads, adds or drops as needed."""
        async with self._lock:
            files = await anyio.to_thread.run_sync(self._scan)
            if files is None:
                return []
            results = []
            for name in [name for name in self.lifecycle.models.names if name not in files]:
                results.append(await self._removed(name))
            for name in [name for name in self._refused if name not in files]:
                # A refused file that is gone: nothing is left to report.
                del self._refused[name]
                self.lifecycle.clear_reload_error(name)
            for name, (path, files_now) in files.items():
                served = self.lifecycle.models.models.get(name)
                if served is not None and served.signature == files_now:
                    continue
                if self._refused.get(name) == files_now:
                    continue
                del served
                results.append(await self._reload(name, path))
            return results

    def _scan(self) -> dict[str, tuple[Path, FileSignature]] | None:
        settings = self.settings
        if serves_single_file(settings):
            path = settings.model_path
            paths = {path.stem: path} if path.is_file() else {}
        else:
            try:
                paths = selected_models(folder_models(settings.models_dir), settings)
            except OSError as exc:
                logger.warning("models folder %s cannot be listed: %s", settings.models_dir, exc)
                return None
        return {name: (path, signature(path)) for name, path in paths.items()}

    async def _removed(self, name: str) -> ReloadResult:
        lifecycle = self.lifecycle
        models = lifecycle.models
        served = models.models[name]
        if name == models.default_name or serves_single_file(self.settings):
            detail = (
                f"model file removed; still serving version {served.version} (the default "
                "model cannot be dropped: restore the file, or restart with another default)"
            )
            if lifecycle.reload_errors.get(name) != detail:
                logger.warning("model %r: %s", name, detail)
                lifecycle.note_reload_error(name, detail)
            return ReloadResult(name, "kept", served.version, detail=detail)
        await lifecycle.swap(models.without(name))
        lifecycle.clear_reload_error(name)
        lifecycle.metrics.observe_reload(name, "dropped")
        logger.warning("model %r dropped: its file was removed", name)
        return ReloadResult(name, "dropped", served.version)

    async def _reload(self, name: str, path: Path) -> ReloadResult:
        await self._await_release()
        lifecycle = self.lifecycle
        started = time.perf_counter()
        files_before = await anyio.to_thread.run_sync(signature, path)
        try:
            model, full = await anyio.to_thread.run_sync(
                self._prepare, name, path, files_before, abandon_on_cancel=True
            )
        except Exception as exc:
            changed = await anyio.to_thread.run_sync(signature, path) != files_before
            if isinstance(exc, _StillChangingError) or changed:
                # Most likely a copy in progress: judge the file once it has settled.
                logger.info("model %r: %s is still changing; retrying shortly", name, path)
                self._loop.call_later(_SETTLE_SECONDS, self._wake.set)
                return ReloadResult(name, "changing")
            self._refused[name] = files_before
            served = lifecycle.models.models.get(name)
            keeps = f"still serving version {served.version}" if served else "not served"
            detail = f"{exc} ({keeps})"
            lifecycle.note_reload_error(name, detail)
            lifecycle.metrics.observe_reload(name, "failed")
            logger.error("model %r: reload of %s refused: %s", name, path, detail)
            return ReloadResult(name, "failed", detail=detail)
        seconds = time.perf_counter() - started
        old = lifecycle.models.models.get(name)
        self._refused.pop(name, None)
        lifecycle.clear_reload_error(name)
        lifecycle.metrics.observe_reload(name, "ok")
        await lifecycle.swap(lifecycle.models.with_model(model))
        if full and old is not None:
            with contextlib.suppress(TypeError):
                self._retired = weakref.ref(old.engine)
        if full:
            logger.info(
                "model %r: version %s swapped in (was %s) after %.2f s of loading and warm-up",
                name,
                model.version,
                old.version if old else "not served",
                seconds,
            )
        else:
            logger.info("model %r: card or timestamps changed; version %s", name, model.version)
        return ReloadResult(name, "loaded" if full else "card", model.version, seconds)

    def _prepare(self, name: str, path: Path, files_now: FileSignature) -> tuple[ServedModel, bool]:
        """Runs in a worker thread: the new model, loaded and warmed up, and whether an engine
        was loaded (False when only the card or a timestamp changed).

        Raises:
            _StillChangingError: If the files changed meanwhile.
            Exception: Whatever loading or warming up raised (`ModelLoadError` mostly).
        """
        served = self.lifecycle.models.models.get(name)
        if served is not None and served.signature and files_now[1] == served.signature[1]:
            same_file = files_now[0] == served.signature[0]
            if same_file or content_version(path) == served.version:
                return with_card(served, path, files_now), False
        del served
        model = load_model(name, path, self.settings, self.lifecycle.engine_factory)
        if model.signature != files_now:
            raise _StillChangingError
        model.warm_up()
        if signature(path) != model.signature:
            raise _StillChangingError
        return model, True

    async def _await_release(self) -> None:
        """Waits until the engine replaced last is freed (its requests have finished)."""
        retired, self._retired = self._retired, None
        if retired is None:
            return
        deadline = time.monotonic() + self.release_timeout
        collected_at = 0.0
        while retired() is not None:
            now = time.monotonic()
            if now >= deadline:
                logger.warning(
                    "the replaced model is still in use after %.0f s; loading the next one anyway",
                    self.release_timeout,
                )
                return
            if now - collected_at >= 1.0:
                gc.collect()  # engines may sit in reference cycles
                collected_at = now
                continue
            await asyncio.sleep(0.1)


def ignore_sighup() -> None:
    """SIGHUP does nothing: before the watcher listens and after it stops (its default action
    would end the server)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
