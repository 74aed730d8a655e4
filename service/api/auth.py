"""API keys: `Authorization: Bearer KEY` for `POST /upscale` and `GET /models` once keys are set.

Keys come from `UPSCALER_API_KEYS` (the keys themselves, as `SecretStr`s, never logged) and
`UPSCALER_API_KEYS_FILE` (their SHA-256 hex digests, one a line, so the file holds no key).
Only digests are kept: a presented key is hashed and compared with every accepted digest by
`hmac.compare_digest`, so the time taken tells nothing about how close a guess was.

`require_api_key` is a dependency declared before the other parameters of the protected
routes, so a refused request costs no byte of its body. It uses FastAPI's `HTTPBearer` (without
its own error) so that the OpenAPI document declares the scheme; `document_access` then makes the
document say what the running service asks for (no key at all when keys are off).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.context import context_of
from service.config import Settings
from service.exceptions import SettingsError

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from UPSCALER_API_KEYS (or UPSCALER_API_KEYS_FILE), as "
    "`Authorization: Bearer KEY`; required only when keys are configured.",
)

_HEX_DIGEST_LENGTH = 64


class ApiKeyConfigError(SettingsError):
    """UPSCALER_API_KEYS_FILE cannot be read or holds a line that is no SHA-256 hex digest."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_digest_file(path: Path) -> tuple[bytes, ...]:
    """The digests of a keys file: SHA-256 hex, one a line; blank lines and `#` comments skipped.

    Raises:
        ApiKeyConfigError: If the file cannot be read or a line is not a SHA-256 hex digest.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyConfigError(f"API keys file {path} cannot be read: {exc}") from exc
    digests = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip().lower()
        if not text:
            continue
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            digest = b""
        if len(text) != _HEX_DIGEST_LENGTH or len(digest) != _HEX_DIGEST_LENGTH // 2:
            # The line itself is not repeated: it might be a key pasted by mistake.
            raise ApiKeyConfigError(
                f"API keys file {path}, line {number}: not a SHA-256 hex digest (64 hex digits; "
                "`printf %s KEY | sha256sum`)"
            )
        digests.append(digest)
    return tuple(digests)


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys, as SHA-256 digests; no digest means authentication is off."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The keys of `api_keys` and `api_keys_file`.

        Raises:
            ApiKeyConfigError: See `read_digest_file`.
        """
        digests = [_digest(key.get_secret_value()) for key in settings.api_keys]
        if settings.api_keys_file is not None:
            digests += read_digest_file(settings.api_keys_file)
        return cls(tuple(dict.fromkeys(digests)))

    @property
    def enabled(self) -> bool:
        """Whether requests must present a key."""
        return bool(self.digests)

    def accepts(self, key: str) -> bool:
        """Whether `key` is one of the accepted keys (constant time in the key's content)."""
        presented = _digest(key)
        found = False
        for digest in self.digests:
            # No early exit: every digest is compared whatever matched before.
            found |= hmac.compare_digest(presented, digest)
        return found


def _refuse(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def _check(request: Request, scheme: str | None, key: str | None) -> None:
    keys = context_of(request).api_keys
    if not keys.enabled:
        return
    if not key or (scheme or "").lower() != "bearer":
        raise _refuse("an API key is required: send `Authorization: Bearer KEY`")
    if not keys.accepts(key):
        raise _refuse("the API key is not valid")


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """Lets the request through when keys are off or it carries an accepted key.

    Returns:
        The accepted key ("" when keys are off), from this one reading of the header: what
        depends on the caller's identity (whose jobs it sees) uses it, never a parse of its own.

    Raises:
        HTTPException: 401 `{"detail": ...}` with `WWW-Authenticate: Bearer` otherwise.
    """
    if credentials is None:
        _check(request, None, None)
        return ""
    _check(request, credentials.scheme, credentials.credentials)
    return credentials.credentials if context_of(request).api_keys.enabled else ""


def has_access(request: Request) -> bool:
    """Whether the request may see what keys protect: keys are off, or it carries one."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    try:
        _check(request, scheme, key.strip())
    except HTTPException:
        return False
    return True


def require_api_key_for_metrics(request: Request) -> None:
    """`require_api_key` when `UPSCALER_PROTECT_METRICS` is on; open otherwise.

    Reads the header itself rather than through `bearer`, so that the OpenAPI document does
    not claim that scrapes always need a key.
    """
    if not context_of(request).settings.protect_metrics:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    _check(request, scheme, key.strip())


#: The OpenAPI answer of a refused key (the routes' own error shape, `ErrorBody`).
_UNAUTHORIZED_RESPONSE = {
    "description": "API keys are configured and the request carries no `Authorization: Bearer "
    "KEY` header, or an unknown key. Has `WWW-Authenticate: Bearer`.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def document_access(schema: dict[str, Any], keys: ApiKeys, protect_metrics: bool) -> None:
    """Makes the OpenAPI document claim the authentication the service really asks for.

    FastAPI declares the Bearer scheme on every route that depends on `require_api_key`,
    whatever the settings; a generated client would then insist on a key nobody has. With keys
    off, the scheme, the operations' `security` and their 401 answers go; with keys on and
    `protect_metrics`, GET /metrics (whose check reads the header itself) gets them too.
    """
    operations = [
        operation
        for path_item in schema.get("paths", {}).values()
        for operation in path_item.values()
        if isinstance(operation, dict)
    ]
    if not keys.enabled:
        for operation in operations:
            if operation.pop("security", None) is not None:
                operation.get("responses", {}).pop("401", None)
        schema.get("components", {}).pop("securitySchemes", None)
        return
    metrics = schema.get("paths", {}).get("/metrics", {}).get("get")
    if protect_metrics and metrics is not None:
        metrics["security"] = [{bearer.scheme_name: []}]
        metrics.setdefault("responses", {})["401"] = _UNAUTHORIZED_RESPONSE
