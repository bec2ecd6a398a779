"""Standard Webhooks signatures: make a secret, sign a message, verify a received one.

A receiver needs only this module (no Redis, no HTTP client): ``verify(secret, headers,
body)`` returns the JSON payload of a genuine webhook or raises
:class:`~docproc.base.errors.WebhookSignatureInvalid`. ``docproc.delivery.webhooks`` re-exports it.

Secrets are ``whsec_`` + base64 of the key bytes; the signature is
``v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>``, one per
secret, space-separated (two during a rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from docproc.base.errors import ConfigurationError, WebhookSignatureInvalid

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def _secret_key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        key = b""
    if len(key) < 16:  # never echo the secret itself
        raise ConfigurationError("a webhook secret is not whsec_ + base64 of at least 16 bytes")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``"{msg_id}.{timestamp}.{body}"`` with the secret's key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per secret (space-separated)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }


def verify(secret_or_secrets: str | Sequence[str], headers: Mapping[str, str], body: bytes | str,
           tolerance_s: float = 300, *, now: float | None = None) -> Any:
    """Check a received webhook; returns its JSON payload or raises WebhookSignatureInvalid.

    ``headers`` is any mapping of the request's headers (names in any case). Passes when the
    timestamp is within ``tolerance_s`` of now and one ``v1`` signature of the header
    matches one of the secrets (constant-time compare). Dedupe on ``headers["webhook-id"]``.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        raise WebhookSignatureInvalid("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(ts)
    except ValueError:
        raise WebhookSignatureInvalid("webhook-timestamp is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookSignatureInvalid("webhook-timestamp is outside the tolerance (too old or in the future)")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    candidates = [secret_or_secrets] if isinstance(secret_or_secrets, str) else list(secret_or_secrets)
    expected = [signature(s, msg_id, timestamp, raw).encode() for s in candidates]
    given = [part.encode() for part in sigs.split() if part.startswith("v1,")]
    if not any(hmac.compare_digest(g, e) for g in given for e in expected):
        raise WebhookSignatureInvalid("no signature matches")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookSignatureInvalid("the body is not JSON") from None
