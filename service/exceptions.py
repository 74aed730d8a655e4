"""Domain exceptions of the upscaling service.

The core modules raise these and know nothing of HTTP; `service.api.errors` maps each class to a
status code in one table. Every message is written for the API client (or, for
a `StartupError`, for the operator reading the start-up log).
"""

from __future__ import annotations


class UpscalerError(Exception):
    """Base class of every error the service reports deliberately."""

    @property
    def detail(self) -> str:
        """The message shown to the client."""
        return str(self)


class StartupError(UpscalerError):
    """The service cannot start: a model or a setting is unusable (the operator's to fix).

    The entry points catch it and exit with its message (`python -m service`: status 3)."""


class ModelLoadError(StartupError):
    """The model file is missing, unreadable or does not follow the export contract."""


class SettingsError(StartupError):
    """A setting cannot be used: a file it names cannot be read or holds no valid value."""


class UploadTooLargeError(UpscalerError):
    """The request body is larger than the configured limit."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class UploadTimeoutError(UpscalerError):
    """The request body did not arrive within the configured time."""


class ImageTooLargeError(UpscalerError):
    """The image's declared dimensions exceed the pixel limit (decompression bombs included)."""


class EmptyUploadError(UpscalerError):
    """The request carried no image bytes."""


class MissingFieldError(UpscalerError):
    """A multipart request lacks the `file` field."""


class UnsupportedMediaTypeError(UpscalerError):
    """The request's Content-Type is neither multipart/form-data nor an image type."""


class UnsupportedImageError(UpscalerError):
    """The bytes are not an image, or an image in a format or pixel mode the service rejects."""


class InvalidParameterError(UpscalerError):
    """A query parameter has a value the service does not know."""


class NotAcceptableError(UpscalerError):
    """The Accept header rules out every image format the service can answer with."""


class CorruptImageError(UpscalerError):
    """The image format was recognised but the data is truncated or damaged."""


class NotReadyError(UpscalerError):
    """The model is still loading or warming up (or failed to warm up)."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class OverloadedError(UpscalerError):
    """All inference slots are busy and the waiting queue is full (or, for uploads, as many
    bodies as allowed are already arriving)."""

    def __init__(self, retry_after_seconds: int, message: str = "server is busy; retry later"):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ClientDisconnectedError(UpscalerError):
    """The client went away before its image was processed, so the work was skipped."""


class JobsUnavailableError(UpscalerError):
    """This service keeps no jobs: UPSCALER_JOBS_DIR is unset, or the host cannot keep them
    (Ray Serve replicas)."""


class JobNotFoundError(UpscalerError):
    """No job of this ID is visible to the caller (never created, deleted, forgotten, or
    another API key's)."""


class JobConflictError(UpscalerError):
    """`PUT /jobs/{id}` reused an ID with another input or other parameters."""


class ResultNotReadyError(UpscalerError):
    """The job has no result (yet, or ever: it failed or was canceled)."""


class ResultExpiredError(UpscalerError):
    """The job's result was deleted after UPSCALER_JOB_RETENTION_SECONDS."""


class JobStoreFullError(UpscalerError):
    """The jobs folder holds UPSCALER_JOBS_MAX_BYTES already; results expiring will free it."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UrlInputDisabledError(UnsupportedMediaTypeError):
    """A JSON body (`image_url`) was sent but UPSCALER_URL_INPUT is off."""


class UrlRefusedError(InvalidParameterError):
    """A URL (image_url or webhook) breaks a rule: scheme, address range, redirects."""


class UrlFetchError(InvalidParameterError):
    """The image at `image_url` could not be fetched (unreachable, error status, timeout)."""


class ImageUrlTooLargeError(UploadTooLargeError):
    """The image at `image_url` is larger than UPSCALER_MAX_UPLOAD_BYTES."""

    def __init__(self, limit_bytes: int) -> None:
        UpscalerError.__init__(
            self,
            f"the image at image_url exceeds the limit of {limit_bytes} bytes "
            "(UPSCALER_MAX_UPLOAD_BYTES); nothing of it was decoded",
        )
        self.limit_bytes = limit_bytes
