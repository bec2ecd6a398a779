"""docproc/base/auth.py: hashed keys from the settings and from a real Redis, revocation, rate limits."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from docproc.base import auth
from docproc.base.auth import (
    KeyRing,
    check_rate,
    create_key,
    generate_key,
    hash_key,
    revoke_key,
)
from docproc.base.errors import (
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)
from docproc.base.settings import Settings


def settings_with(**keys: str) -> Settings:
    return Settings(_env_file=None, api_keys={tenant: hash_key(key) for tenant, key in keys.items()})


def test_keys_are_random_and_only_their_hash_is_kept():
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200 and all(k.startswith("dp_") and len(k) == 46 for k in keys)
    key = next(iter(keys))
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    settings = settings_with(acme=key)
    assert key not in settings.model_dump_json()


def test_settings_refuse_a_plain_key_where_a_hash_belongs(monkeypatch):
    monkeypatch.setenv("DOCPROC_API_KEYS", '{"acme": "dp_plaintext"}')
    with pytest.raises(ValueError, match="sha256 hex"):
        Settings(_env_file=None)
    digest = hash_key("dp_k")
    monkeypatch.setenv("DOCPROC_API_KEYS", f'{{"acme": "{digest}"}}')
    assert Settings(_env_file=None).api_keys == {"acme": digest}


def test_settings_keys_authenticate_their_tenant():
    ring = KeyRing(settings_with(acme="dp_acme-key", globex="dp_globex-key"))
    assert ring.authenticate("dp_acme-key") == "acme"
    assert ring.authenticate("dp_globex-key") == "globex"
    for bad in ("dp_acme-ke", "dp_acme-key ", "", None, "x" * 1000, "dp_äcme", hash_key("dp_acme-key")):
        with pytest.raises(Unauthorized) as info:
            ring.authenticate(bad)
        assert info.value.http_status == 401 and info.value.message == "missing or invalid API key"


def test_settings_hashes_are_compared_in_constant_time(monkeypatch):
    """Every stored hash goes through hmac.compare_digest, even after a match (no early exit)."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    ring = KeyRing(settings_with(a="dp_1", b="dp_2", c="dp_3"))
    assert ring.authenticate("dp_1") == "a"
    assert len(calls) == 3 and all(a == hash_key("dp_1") for a, _ in calls)
    calls.clear()
    with pytest.raises(Unauthorized):
        ring.authenticate("dp_nope")
    assert len(calls) == 3


def test_redis_keys_create_authenticate_revoke(redis_client):
    key, digest = create_key(redis_client, "initech")
    assert digest == hash_key(key)
    assert redis_client.get(f"docproc:apikey:{digest}") == "initech"
    assert key not in str(redis_client.keys("*")) and key not in str(redis_client.mget(redis_client.keys("*")))
    ring = KeyRing(settings_with(acme="dp_acme-key"), redis_client)
    assert ring.authenticate(key) == "initech"
    assert ring.authenticate("dp_acme-key") == "acme"  # both sources at once

    assert revoke_key(redis_client, digest[:10].upper()) == digest
    with pytest.raises(Unauthorized):
        ring.authenticate(key)
    with pytest.raises(NotFound):
        revoke_key(redis_client, digest[:10])
    with pytest.raises(InvalidRequest):
        revoke_key(redis_client, digest[:4])  # too short to be sure
    with pytest.raises(InvalidRequest):
        create_key(redis_client, "no spaces")


def test_revoke_refuses_an_ambiguous_prefix(redis_client):
    redis_client.set("docproc:apikey:" + "ab" * 32, "t1")
    redis_client.set("docproc:apikey:" + "ab" * 31 + "cd", "t2")
    with pytest.raises(InvalidRequest, match="2 stored keys"):
        revoke_key(redis_client, "abababab")
    assert revoke_key(redis_client, "ab" * 31 + "c") == "ab" * 31 + "cd"
    assert redis_client.get("docproc:apikey:" + "ab" * 32) == "t1"


def test_rate_limit_fixed_window_with_retry_after(redis_client):
    digest = hash_key("dp_busy")
    start = 1_700_000_000 // 60 * 60 + 15.2  # 15.2 s into a minute
    for i in range(5):
        check_rate(redis_client, digest, 5, now=start + i)
    with pytest.raises(RateLimited) as info:
        check_rate(redis_client, digest, 5, now=start + 10)
    assert info.value.retry_after == 35 and info.value.http_status == 429  # 60 - 25.2, rounded up
    assert info.value.to_dict()["details"] == {"retry_after": 35}
    check_rate(redis_client, hash_key("dp_other"), 5, now=start + 10)  # per key
    check_rate(redis_client, digest, 5, now=start + 45)  # the next minute starts afresh
    ttl = redis_client.ttl(f"docproc:rate:{digest}:{int((start + 45) // 60)}")
    assert 0 < ttl <= 120
    for _ in range(50):
        check_rate(redis_client, digest, 0, now=start)  # 0: no limit


def test_rate_limit_on_the_real_clock(redis_client):
    digest = hash_key("dp_clock")
    for _ in range(3):
        check_rate(redis_client, digest, 3)
    with pytest.raises(RateLimited) as info:
        check_rate(redis_client, digest, 3)
    assert 1 <= info.value.retry_after <= 60


def test_redis_down_is_service_unavailable(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    ring = KeyRing(settings_with(acme="dp_acme-key"), client)
    redis_server.stop()
    try:
        assert ring.authenticate("dp_acme-key") == "acme"  # settings keys need no Redis
        with pytest.raises(ServiceUnavailable):
            ring.authenticate("dp_unknown")
        with pytest.raises(ServiceUnavailable):
            check_rate(client, hash_key("dp_acme-key"), 10)
    finally:
        redis_server.start()
