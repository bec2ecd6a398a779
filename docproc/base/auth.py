"""API keys and per-key rate limits.

A key is ``dp_`` + 43 url-safe characters, shown once when made; only its sha256 hex is
kept: in ``settings.api_keys`` (tenant -> hash, from the env) or in Redis
(``docproc:apikey:{hash}`` -> tenant, made by :func:`create_key`). Rate limits count
requests per key in fixed one-minute windows (``docproc:rate:{hash}:{window}``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time

import redis

from docproc.base.errors import (
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)
from docproc.base.settings import TENANT_RE

KEY_PREFIX = "dp_"
MAX_KEY_CHARS = 256
MIN_REVOKE_PREFIX = 8
WINDOW_S = 60


def hash_key(key: str) -> str:
    """The sha256 hex of an API key: what is stored, never the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _apikey_redis_key(digest: str) -> str:
    return f"docproc:apikey:{digest}"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class KeyRing:
    """Answers "which tenant holds this key?" from the settings' keys and the Redis ones."""

    def __init__(self, settings, redis_client: redis.Redis | None = None) -> None:
        self._static = [(tenant, digest) for tenant, digest in settings.api_keys.items()]
        self._redis = redis_client

    def authenticate(self, key: str | None) -> str:
        """The tenant of ``key``; Unauthorized for a missing, malformed, unknown or revoked key.

        The settings' hashes are all compared with hmac.compare_digest (no early exit), so the
        time taken does not tell how much of a hash matched; Redis is looked up by the hash,
        which tells nothing about the key itself.
        """
        digest = self.digest(key)
        tenant = self.static_tenant(digest)
        return tenant if tenant is not None else self.stored_tenant(digest)

    @staticmethod
    def digest(key: str | None) -> str:
        """The hash keys are known by; Unauthorized for a missing or malformed key."""
        if not key or len(key) > MAX_KEY_CHARS or not key.isascii():
            raise Unauthorized("missing or invalid API key")
        return hash_key(key)

    def static_tenant(self, digest: str) -> str | None:
        """The tenant of the key hashed ``digest`` among the settings' keys, else None (no I/O:
        the API asks this on its event loop first)."""
        tenant = None
        for name, stored in self._static:
            if hmac.compare_digest(digest, stored):
                tenant = name
        return tenant

    def stored_tenant(self, digest: str) -> str:
        """The tenant of the key hashed ``digest`` among the keys kept in Redis; Unauthorized
        for an unknown or revoked one."""
        if self._redis is not None:
            try:
                found = _text(self._redis.get(_apikey_redis_key(digest)))
            except redis.exceptions.RedisError as exc:
                raise ServiceUnavailable(f"key store unavailable ({type(exc).__name__})") from exc
            if found is not None:
                return found
        raise Unauthorized("missing or invalid API key")


def create_key(redis_client: redis.Redis, tenant: str) -> tuple[str, str]:
    """Make and store a key for ``tenant``; returns (key, its hash). Show the key once."""
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise InvalidRequest(f"invalid tenant name {tenant!r}; use {TENANT_RE.pattern}")
    key = generate_key()
    digest = hash_key(key)
    try:
        redis_client.set(_apikey_redis_key(digest), tenant)
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(f"key store unavailable ({type(exc).__name__})") from exc
    return key, digest


def revoke_key(redis_client: redis.Redis, hash_prefix: str) -> str:
    """Delete the Redis key whose hash starts with ``hash_prefix`` (>= 8 hex chars); returns
    the full hash. NotFound if none matches; InvalidRequest if several do."""
    prefix = hash_prefix.strip().lower()
    if len(prefix) < MIN_REVOKE_PREFIX or len(prefix) > 64 or not all(c in "0123456789abcdef" for c in prefix):
        raise InvalidRequest(f"give at least {MIN_REVOKE_PREFIX} hex characters of the key's hash")
    try:
        matches = sorted({_text(k) for k in redis_client.scan_iter(match=_apikey_redis_key(prefix) + "*", count=1000)})
        if not matches:
            raise NotFound(f"no stored API key hash starts with {prefix}")
        if len(matches) > 1:
            raise InvalidRequest(f"{len(matches)} stored keys start with {prefix}; give more characters")
        redis_client.delete(matches[0])
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(f"key store unavailable ({type(exc).__name__})") from exc
    return matches[0].rsplit(":", 1)[1]


def check_rate(redis_client: redis.Redis, key_hash: str, limit_per_minute: int, *, now: float | None = None) -> None:
    """Count one request for the key in the current minute; RateLimited (with the seconds
    until the window ends as ``retry_after``) once the count passes ``limit_per_minute``.
    A limit of 0 switches the check off."""
    if limit_per_minute <= 0:
        return
    now = time.time() if now is None else now
    window = int(now // WINDOW_S)
    counter = f"docproc:rate:{key_hash}:{window}"
    try:
        pipe = redis_client.pipeline(transaction=True)
        pipe.incr(counter)
        pipe.expire(counter, WINDOW_S * 2)
        count = int(pipe.execute()[0])
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(f"rate limiter unavailable ({type(exc).__name__})") from exc
    if count > limit_per_minute:
        retry_after = max(1, math.ceil((window + 1) * WINDOW_S - now))
        raise RateLimited(
            f"more than {limit_per_minute} requests in a minute for this key", retry_after=retry_after
        )
