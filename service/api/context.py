"""What an app holds, typed: `AppContext`, the one attribute the app factory sets on
`app.state`; the routes, dependencies and middleware read it through `context_of`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from service.config import Settings
from service.core.jobs.service import JobService
from service.core.lifecycle import ModelLifecycle
from service.core.metrics import ServiceMetrics
from service.core.urlfetch import UrlFetcher

if TYPE_CHECKING:
    from service.api.auth import ApiKeys


@dataclass(frozen=True)
class AppContext:
    """The app's long-lived parts, built once by `service.api.app.create_app`.

    Attributes:
        settings: The settings the app was built with (limits, keys, page).
        lifecycle: The models, from load to drop, and readiness.
        api_keys: The accepted API keys (none: authentication off).
        fetcher: Fetches `image_url` inputs (`service.core.urlfetch`; webhooks go through
            connections of their own, `JobService`'s).
        jobs: The asynchronous jobs, or None when this app keeps none (`jobs_off` says why).
        jobs_off: Why there are no jobs, for the job routes' 404.
    """

    settings: Settings
    lifecycle: ModelLifecycle
    api_keys: ApiKeys
    fetcher: UrlFetcher
    jobs: JobService | None = None
    jobs_off: str = ""

    @property
    def metrics(self) -> ServiceMetrics:
        return self.lifecycle.metrics


def context_of(connection: HTTPConnection) -> AppContext:
    """The context of the app serving `connection` (a request)."""
    context: AppContext = connection.app.state.context
    return context
