"""The service on Ray Serve: replicas on many machines, GPU scheduling, autoscaling, model swaps.

`serve run service.entry.serve:app` (one machine, for a try) or
`serve deploy deploy/ray/serve-cpu.yaml` (a running Ray cluster) starts it; docs/scaling.md has
the commands. Needs the `ray` extra (`pip install '.[ray]'`); nothing else in the service imports
this module.

- **The same app.** Each replica serves the app `service.api.app.create_app` builds, wrapped whole
  by `@serve.ingress`: the same routes, parameter checks, admission, error bodies, request IDs,
  metrics and web page as `python -m service`. The app is built on the replica (`serve.ingress`
  is given a builder function, Ray >= 2.47) rather than pickled from the driver: an app holds
  locks (metrics, admission) that cannot be pickled, and its settings are read where it runs.
- **Settings.** The same `Settings` class, read from the replica's environment: `UPSCALER_*`
  variables set by the config file's `runtime_env: {env_vars: ...}` (tile size, concurrency,
  API keys, ...). Which models are served comes from the deployment's `user_config`
  (`USER_CONFIG_KEYS`): `{models_dir: DIR, default_model: NAME}` serves every model of a
  folder (`models: [NAME, ...]`: some of them), `{model_path: FILE}` one file; `{}` (the
  default) keeps what the environment says. Paths are read on each replica's machine, a
  relative one from the folder Ray was started in there (`serve run`, `ray start`): the
  repository root for deploy/ray/serve-cpu.yaml.
- **Memory.** Every replica's process starts with `MALLOC_ARENA_MAX=2` (`ray_actor_options`
  below; the config files set it in their `env_vars`, which replace these options): glibc reads
  it at start-up, and by the time a replica runs Python code Ray's threads already hold the 8
  arenas a core that `service.host.limit_malloc_arenas` would bound.
- **Start-up.** Ray runs the app's lifespan when a replica starts (uvicorn's lifespan protocol,
  as `uvicorn service.main:app` does), but hands `user_config` to `reconfigure` only after it.
  So the app is built with `models_at_startup=False`, and the first `reconfigure` loads the
  models through the lifecycle the lifespan uses (`ModelLifecycle.start`) and waits for their
  warm-up: a replica joins the pool warm. A model that fails to load or warm up fails the
  replica's start, and Ray starts another (`serve status` shows why).
- **Swaps.** A new `user_config` (`serve deploy` with the config file changed) reaches live
  replicas through `reconfigure`, without restarts: the new models are loaded and warmed up
  beside the serving ones, then swapped in (`ModelLifecycle.replace`, the hot reload's
  one-assignment swap); requests in flight finish on the model they started on, and none
  fails. A config whose models cannot be loaded is refused: the replica keeps serving its
  models, says why in `/readyz` (`reload_errors["user_config"]`) and its log.
- **Jobs.** Off here, whatever UPSCALER_JOBS_DIR says: every job route answers 404 with
  `RAY_JOBS_DETAIL` (a store per replica would give wrong answers on the other replicas).
- **Health.** `check_health` raises (from the lifecycle's one readiness decision), so that Ray
  replaces the replica, when it serves no model or its warm-up failed. `/healthz`, `/readyz` and
  `/metrics` answer per replica (the one the proxy picked); file changes in the models folder are
  still picked up by each replica's watcher (`service.core.reload`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve

from service.api.app import create_app
from service.config import Settings
from service.core.lifecycle import ModelLifecycle, Phase
from service.core.registry import serves_single_file
from service.exceptions import ModelLoadError
from service.host import ARENA_ENVIRONMENT, MALLOC_ARENAS
from service.logs import ensure_log_output

logger = logging.getLogger("service.entry.serve")

#: The `user_config` keys: the model settings a config change swaps on live replicas.
USER_CONFIG_KEYS = ("model_path", "models_dir", "default_model", "models")
#: Where a refused `user_config` is reported in `/readyz`'s `reload_errors`.
USER_CONFIG_ERROR_KEY = "user_config"
#: Why the job routes answer 404 here: a store per replica would answer a status or result
#: request that the proxy sends to another replica wrongly (404, or another job's state), and
#: Ray's proxy cannot route by job ID; a shared store is not built (docs/scaling.md, Jobs).
RAY_JOBS_DETAIL = (
    "jobs are not available on this Ray Serve deployment: each replica would keep its own "
    "store, so a job's status and result could be asked of a replica without them; use "
    "POST /upscale here, or `python -m service` with UPSCALER_JOBS_DIR for jobs"
)


def settings_for(config: Mapping[str, Any] | None, base: Settings) -> Settings:
    """The settings a replica serves with: `base` (its environment) with the models that
    `config` names.

    `{"model_path": FILE}` serves that one file; otherwise `models_dir` with `default_model`
    serves the folder (the `models` it names, all when none), each key base's when absent, even
    if the environment set `UPSCALER_MODEL_PATH`. An empty or missing config returns `base`
    unchanged.

    Raises:
        ValueError: For a key other than `USER_CONFIG_KEYS`, or a value the settings reject.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(USER_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"user_config takes {', '.join(USER_CONFIG_KEYS)}; got {', '.join(unknown)} (other "
            "settings come from UPSCALER_* variables: runtime_env env_vars)"
        )
    if not config:
        return base
    values = base.model_dump(exclude=set(USER_CONFIG_KEYS))
    if "model_path" in config:
        values["model_path"] = config["model_path"]
    else:
        values["models_dir"] = config.get("models_dir", base.models_dir)
        values["default_model"] = config.get("default_model", base.default_model)
        values["models"] = config.get("models", base.models)
    validated = Settings(**values)
    # The environment may still have filled `model_path`: it counts as set (one file served,
    # `service.core.registry.serves_single_file`) only when the config names it.
    fields_set = set(validated.model_fields_set)
    if "model_path" not in config:
        fields_set.discard("model_path")
    return Settings.model_construct(_fields_set=fields_set, **validated.model_dump())


def _model_keys(settings: Settings) -> tuple[Any, ...]:
    if serves_single_file(settings):
        return (str(settings.model_path),)
    return (str(settings.models_dir), settings.default_model, tuple(settings.models))


def build_app() -> FastAPI:
    """The service's app with settings from this replica's environment; its models are loaded
    by `Upscaler.reconfigure`."""
    settings = Settings()
    ensure_log_output(settings.log_format)
    return create_app(settings, models_at_startup=False, jobs_unavailable=RAY_JOBS_DETAIL)


@serve.deployment(
    # Never None: Serve calls `reconfigure` only with a user_config, and it loads the models.
    user_config={},
    # The app's own admission (UPSCALER_MAX_CONCURRENCY + UPSCALER_MAX_QUEUE = 1 + 8) bounds
    # what a replica accepts; the config files set both sides together.
    max_ongoing_requests=9,
    # Warm-up runs in `reconfigure` on first start; give health checks a margin over it.
    health_check_timeout_s=60,
    # Read by glibc when the replica's process starts (see the module docstring, Memory).
    ray_actor_options={"runtime_env": {"env_vars": {ARENA_ENVIRONMENT: str(MALLOC_ARENAS)}}},
)
@serve.ingress(build_app)
class Upscaler:
    """One replica of the upscaling service (see the module docstring)."""

    def __init__(self) -> None:
        self._config_lock = asyncio.Lock()
        self._serving: tuple[Any, ...] | None = None

    @property
    def _lifecycle(self) -> ModelLifecycle:
        app: FastAPI = self.app  # type: ignore[attr-defined]  # set by serve.ingress
        lifecycle: ModelLifecycle = app.state.context.lifecycle
        return lifecycle

    async def reconfigure(self, config: Mapping[str, Any] | None) -> None:
        """Loads the models `config` names (first call), or swaps them in on a live replica.

        Raises:
            ValueError, ModelLoadError: On the first call, so that the replica fails to start;
                later, a refused config leaves the serving models in place (see the module
                docstring).
        """
        async with self._config_lock:
            lifecycle = self._lifecycle
            if lifecycle.serving is None:
                await self._start(settings_for(config, lifecycle.settings))
                return
            try:
                settings = settings_for(config, lifecycle.settings)
            except ValueError as exc:
                self._refuse(str(exc))
                return
            if _model_keys(settings) == self._serving:
                # Back to the config served (after a refused one): nothing to load.
                lifecycle.clear_reload_error(USER_CONFIG_ERROR_KEY)
                return
            await self._swap(settings)

    async def _start(self, settings: Settings) -> None:
        lifecycle = self._lifecycle
        started = time.perf_counter()
        await lifecycle.start(settings)
        while not (readiness := lifecycle.readiness()).ready:
            if readiness.phase is Phase.FAILED:
                raise ModelLoadError(f"warm-up failed: {readiness.detail}")
            await asyncio.sleep(0.05)
        self._serving = _model_keys(settings)
        models = lifecycle.models
        logger.info(
            "replica ready with %s (default %s) after %.2f s",
            ", ".join(models.names),
            models.default_name,
            time.perf_counter() - started,
        )

    async def _swap(self, settings: Settings) -> None:
        lifecycle = self._lifecycle
        started = time.perf_counter()
        old = ", ".join(f"{model.name} {model.version}" for model in lifecycle.models)
        try:
            await lifecycle.replace(settings)
        except Exception as exc:
            self._refuse(f"{exc} (still serving {', '.join(lifecycle.models.names)})")
            return
        self._serving = _model_keys(settings)
        new = ", ".join(f"{model.name} {model.version}" for model in lifecycle.models)
        seconds = time.perf_counter() - started
        logger.info("user_config: swapped in %s (was %s) after %.2f s", new, old, seconds)

    def _refuse(self, detail: str) -> None:
        self._lifecycle.note_reload_error(USER_CONFIG_ERROR_KEY, detail)
        logger.error("user_config refused: %s", detail)

    async def check_health(self) -> None:
        """Raises (Ray then replaces the replica) when no model is served or warm-up failed."""
        readiness = self._lifecycle.readiness()
        if readiness.phase is Phase.STARTING:
            raise RuntimeError("no model is loaded")
        if readiness.phase is Phase.FAILED:
            raise RuntimeError(f"warm-up failed: {readiness.detail}")


#: The application `serve run service.entry.serve:app` and the config files start.
app = Upscaler.bind()
