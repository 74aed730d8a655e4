"""What the running service holds between requests: the model, the gate and readiness.

Built once in the app's lifespan and shared by all requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anyio

    from service.admission import AdmissionGate
    from service.batching import TileBatcher
    from service.config import Settings
    from service.encoding import EncodeOptions
    from service.runtime import UpscalerRuntime


@dataclass
class ServiceState:
    """Shared state of one running app.

    Attributes:
        settings: The settings the app was built with.
        runtime: The loaded model.
        gate: Admission control for upscales.
        uploads: Bounds the request bodies being received at once (no queue: beyond the bound,
            503), since each may hold up to `settings.max_upload_bytes` in memory.
        limiter: Worker threads for upscales, as many as `settings.max_concurrency`, kept apart
            from the default thread pool so that other blocking work never waits behind them.
        encode_options: How responses are encoded.
        fit_tiles: Whether tiles are fitted to each image (see `service.upscaler.fits_tiles`).
        batcher: Packs the tiles of concurrent requests into fixed-shape model calls; only with
            fixed tiles and `tile_batch_size` > 1, None otherwise.
        warmed: Set once the warm-up run succeeded; readiness and upscales wait for it.
        warmup_error: Why warm-up failed, if it did.
    """

    settings: Settings
    runtime: UpscalerRuntime
    gate: AdmissionGate
    uploads: AdmissionGate
    limiter: anyio.CapacityLimiter
    encode_options: EncodeOptions
    fit_tiles: bool
    batcher: TileBatcher | None
    warmed: threading.Event = field(default_factory=threading.Event)
    warmup_error: str | None = None

    @property
    def ready(self) -> bool:
        """Whether upscales are served."""
        return self.warmed.is_set()
