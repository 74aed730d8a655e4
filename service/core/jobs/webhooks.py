"""Webhook messages as the Standard Webhooks specification signs them.

Each delivery carries `webhook-id` (the same on every retry of one message, so receivers can
drop duplicates), `webhook-timestamp` (Unix seconds) and `webhook-signature`:
`v1,` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")). The secret is
`UPSCALER_WEBHOOK_SECRET`: `whsec_` + base64 as the specification writes them, or any other
text, whose UTF-8 bytes are the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: The events a job can announce (`webhook_events_filter`): it started running; it ended
#: (succeeded, failed or canceled). Only `completed` is retried.
EVENTS = ("start", "completed")
#: Prefix of a secret written as the specification writes them.
SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decoded after `whsec_`, else its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            pass  # not base64 after all: used as text, like any other secret
    return secret.encode()


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def message(event: str, job: Mapping[str, Any], now: float) -> bytes:
    """The JSON body of one event: `{"type": "job.EVENT", "timestamp", "data": JOB}`."""
    payload = {
        "type": f"job.{event}",
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "data": dict(job),
    }
    return json.dumps(payload).encode()


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery."""
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }


def worth_retrying(status: int | None) -> bool:
    """Whether a failed delivery may succeed later: no answer, 429, or a server error."""
    return status is None or status == 429 or status >= 500
