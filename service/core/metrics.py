"""Prometheus metrics of the upscaling service (the HTTP layer's middleware feeds the request
counts: `service.api.middleware`).

Each app gets its own `CollectorRegistry` rather than prometheus_client's global one, so that
several apps in one process (as in the test suite) do not register the same names twice.

The upscale metrics carry a `model` label: the name of the model that served the request (a
loaded model's name, never the raw query value, so the label's values stay bounded), or empty
for requests refused before a model was chosen (not ready, unknown model).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

# Upscales take from tens of milliseconds (small image, GPU) to minutes (4 MP on a laptop CPU).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    """The service's metrics, registered in a private registry.

    Attributes:
        registry: The registry to expose.
        requests: `upscaler_requests_total{model,status}`, upscale requests by HTTP status.
        request_seconds: `upscaler_request_seconds{model}`, upscale latency from request to
            response.
        inference_seconds: `upscaler_inference_seconds{model}`, model time per upscale (tiles
            only).
        inflight: `upscaler_inflight`, upscales running now.
        queue_depth: `upscaler_queue_depth`, upscales waiting for a slot now.
        pixels: `upscaler_pixels_total{model,side}`, pixels of successful upscales; `side` is
            `input` (uploaded image) or `output` (the 16x larger result).
        provider: `upscaler_provider_info{provider,fallback}`, 1 for the provider in use (the
            default model's).
        models: `upscaler_model_info{model,default,provider,precision}`, 1 for each loaded
            model.
        versions: `upscaler_model_version_info{model,version}`, 1 for the version served of
            each model (the first 12 hex digits of its file's SHA-256).
        reloads: `upscaler_model_reloads_total{model,result}`, hot reloads by outcome
            (`ok`, `failed`, `dropped` for a removed file).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "upscaler_requests",
            "Upscale requests by model and HTTP status code.",
            ["model", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "upscaler_request_seconds",
            "Upscale request latency in seconds, including queueing, decoding and encoding.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "upscaler_inference_seconds",
            "Model time per upscale in seconds (all tiles of one image).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge("upscaler_inflight", "Upscales running now.", registry=self.registry)
        self.queue_depth = Gauge(
            "upscaler_queue_depth", "Upscales waiting for a free slot.", registry=self.registry
        )
        self.pixels = Counter(
            "upscaler_pixels",
            "Pixels of successful upscales; side=input counts uploaded pixels, side=output "
            "the upscaled ones.",
            ["model", "side"],
            registry=self.registry,
        )
        self.provider = Gauge(
            "upscaler_provider_info",
            "Execution provider running the model (value 1), and whether it is a fallback.",
            ["provider", "fallback"],
            registry=self.registry,
        )
        self.models = Gauge(
            "upscaler_model_info",
            "Models loaded (value 1): name, whether it is the default, provider and precision.",
            ["model", "default", "provider", "precision"],
            registry=self.registry,
        )
        self.versions = Gauge(
            "upscaler_model_version_info",
            "Version served of each model (value 1): the first 12 hex digits of its SHA-256.",
            ["model", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "upscaler_model_reloads",
            "Hot reloads of a model file by result: ok, failed (the old version kept serving), "
            "dropped (file removed).",
            ["model", "result"],
            registry=self.registry,
        )

    def track_queue(self, waiting: Callable[[], int]) -> None:
        """Makes `upscaler_queue_depth` read the current queue length at scrape time."""
        self.queue_depth.set_function(waiting)

    def set_provider(self, provider: str, fallback: bool) -> None:
        """Records the provider the model runs on."""
        self.provider.clear()
        self.provider.labels(provider=provider, fallback=str(fallback).lower()).set(1)

    def set_models(self, models: list[tuple[str, str, str]], default: str) -> None:
        """Records the loaded models as `(name, provider, precision)`, and the default's name.

        Also starts each model's latency and pixel series at zero, so that a model nobody has
        used yet shows as such rather than as a missing series.
        """
        self.models.clear()
        for name, provider, precision in models:
            is_default = str(name == default).lower()
            self.models.labels(
                model=name, default=is_default, provider=provider, precision=precision
            ).set(1)
            self.request_seconds.labels(model=name)
            self.inference_seconds.labels(model=name)
            for side in ("input", "output"):
                self.pixels.labels(model=name, side=side)

    def set_versions(self, versions: list[tuple[str, str]]) -> None:
        """Records the version served of each model, as `(name, version)`."""
        self.versions.clear()
        for name, version in versions:
            self.versions.labels(model=name, version=version).set(1)

    def observe_reload(self, model: str, result: str) -> None:
        """Counts one hot reload of `model` with its result (`ok`, `failed`, `dropped`)."""
        self.reloads.labels(model=model, result=result).inc()

    def observe_upscale(
        self, input_pixels: int, output_pixels: int, inference_seconds: float, model: str = ""
    ) -> None:
        """Counts one successful upscale by `model`."""
        self.pixels.labels(model=model, side="input").inc(input_pixels)
        self.pixels.labels(model=model, side="output").inc(output_pixels)
        self.inference_seconds.labels(model=model).observe(inference_seconds)

    def observe_request(self, status: int, seconds: float, model: str = "") -> None:
        """Counts one finished upscale request (`model` empty when none was chosen)."""
        self.requests.labels(model=model, status=str(status)).inc()
        self.request_seconds.labels(model=model).observe(seconds)

    def render(self, accept_header: str | None) -> tuple[bytes, str]:
        """Renders the metrics in the format the scraper asked for.

        Args:
            accept_header: The scrape request's Accept header (OpenMetrics or plain text).

        Returns:
            The body and its content type.
        """
        encoder, content_type = choose_encoder(accept_header or "")
        return encoder(self.registry), content_type
