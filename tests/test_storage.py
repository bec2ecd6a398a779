"""docproc/base/storage.py on both backends: a local directory and S3 over HTTP (moto)."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import httpx
import pytest
from conftest import make_bucket

from docproc.base.errors import ConfigurationError, NotFound, StorageError
from docproc.base.settings import Settings
from docproc.base.storage import (
    LocalStorage,
    S3Storage,
    document_result_key,
    open_storage,
    page_result_key,
)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(Settings(_env_file=None, storage_url=f"file://{tmp_path}/store"))
    return open_storage(request.getfixturevalue("s3_settings"))


def test_open_storage_picks_the_backend(tmp_path, s3_settings):
    assert isinstance(open_storage(Settings(_env_file=None, storage_url=f"file://{tmp_path}")), LocalStorage)
    s3 = open_storage(s3_settings)
    assert isinstance(s3, S3Storage) and s3.bucket == s3_settings.storage_url[5:].strip("/")
    for bad in ("ftp://x/y", "s3://", "file://", "/plain/path"):
        with pytest.raises(ConfigurationError):
            open_storage(Settings(_env_file=None, storage_url=bad))


def test_relative_file_url_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_storage(Settings(_env_file=None, storage_url="file://./var/docproc"))
    key = store.put_input(b"%PDF-1.7 relative")
    assert (tmp_path / "var" / "docproc" / key).read_bytes() == b"%PDF-1.7 relative"


def test_put_input_is_content_addressed_and_stored_once(storage):
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    key = storage.put_input(data)
    assert key == f"inputs/sha256/{digest[:2]}/{digest}"
    assert storage.exists(key)
    assert storage.get(key) == data
    assert storage.put_input(data) == key  # the same document again: same key, no error
    other = storage.put_input(data + b"!")
    assert other != key and storage.get(other) == data + b"!"


def test_put_result_is_write_once(storage):
    key = document_result_key("0" * 32)
    body = json.dumps({"status": "succeeded"}).encode()
    assert not storage.exists(key)
    storage.put_result(key, body)
    storage.put_result(key, body)  # an identical retry is fine
    with pytest.raises(StorageError) as info:
        storage.put_result(key, b'{"status": "failed"}')
    assert info.value.retryable is False and info.value.code == "storage_error"
    assert storage.get(key) == body  # the first write stands


def test_concurrent_writers_of_one_key_leave_exactly_one_version(storage):
    key = page_result_key("1" * 32, 7)
    assert key.endswith("pages/00007.json")
    bodies = [json.dumps({"writer": i}).encode() for i in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(bodies))

    def write(body: bytes) -> None:
        barrier.wait()
        try:
            storage.put_result(key, body)
            outcomes.append("ok")
        except StorageError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("refused") == 5
    assert storage.get(key) in bodies


def test_missing_key_is_not_found(storage):
    with pytest.raises(NotFound):
        storage.get("results/nope/document.json")
    assert storage.exists("results/nope/document.json") is False


@pytest.mark.parametrize("key", ["../outside", "a/../../b", "/etc/passwd", "", "a//b", "./a", "a\\b", "a/\x00"])
def test_keys_that_could_escape_are_refused(storage, key):
    with pytest.raises(StorageError):
        storage.put_result(key, b"x")
    with pytest.raises(StorageError):
        storage.get(key)


def test_local_storage_never_writes_outside_its_root(tmp_path):
    root = tmp_path / "root"
    store = LocalStorage(root)
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path, root / "link")  # a link inside the root that points out of it
    with pytest.raises(StorageError):
        store.get("link/secret")
    with pytest.raises(StorageError):
        store.put_result("link/planted", b"x")
    assert not (tmp_path / "planted").exists()
    store.put_result("results/j/document.json", b"{}")
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["document.json"]  # no temp files left


def test_presign_gives_a_url_that_serves_the_bytes_over_http(s3_settings):
    store = open_storage(s3_settings)
    key = document_result_key("2" * 32)
    body = b'{"fields": {"total": "12.50"}}'
    store.put_result(key, body)
    url = store.presign(key, 120)
    assert url.startswith(s3_settings.s3_endpoint_url) and "X-Amz-Signature=" in url and "X-Amz-Expires=120" in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.content == body
    with pytest.raises(StorageError):
        store.presign(key, 0)


def test_local_presign_is_none_and_ping_checks_the_root(tmp_path):
    store = LocalStorage(tmp_path / "store")
    assert store.presign("results/x/document.json", 60) is None
    store.ping()
    (tmp_path / "store").rmdir()
    with pytest.raises(StorageError):
        store.ping()


def test_s3_prefix_keeps_keys_under_it(moto_server, s3_settings):
    import boto3

    bucket = make_bucket(moto_server)
    store = open_storage(s3_settings.model_copy(update={"storage_url": f"s3://{bucket}/tenant-a/v1"}))
    key = store.put_input(b"prefixed")
    listed = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == [f"tenant-a/v1/{key}"]
    assert store.get(key) == b"prefixed"


def test_s3_put_asks_expect_continue_only_for_a_large_body(s3_settings):
    """A page result or a typical input goes with its headers in one round trip; a body over
    EXPECT_CONTINUE_OVER_BYTES still waits for the server's 100 Continue (botocore's way)."""
    from docproc.base.storage import EXPECT_CONTINUE_OVER_BYTES

    store = open_storage(s3_settings)
    sent: list[tuple[str, bytes | None]] = []  # (path, Expect header) of each PUT as botocore sends it
    store._s3.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append((request.url, request.headers.get("Expect")))
    )
    small, large = b"{}" * 2000, os.urandom(EXPECT_CONTINUE_OVER_BYTES + 1)
    store.put_result(document_result_key("j1"), small)
    large_key = store.put_input(large)
    assert [expect for _, expect in sent] == [None, b"100-continue"]
    assert sent[1][0].endswith(large_key)
    assert store.get(document_result_key("j1")) == small
    assert store.get(large_key) == large


def test_s3_ping_and_missing_bucket(s3_settings, moto_server):
    open_storage(s3_settings).ping()
    gone = open_storage(s3_settings.model_copy(update={"storage_url": "s3://docproc-no-such-bucket/"}))
    with pytest.raises(StorageError) as info:
        gone.ping()
    assert info.value.retryable is False
    with pytest.raises(StorageError):
        gone.put_input(b"x")


def test_s3_down_is_a_retryable_storage_error(monkeypatch):
    """A moto server of its own, stopped: every call is a retryable StorageError, not a traceback."""
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = make_bucket(endpoint)
    store = S3Storage(bucket, endpoint_url=endpoint, max_attempts=2)
    key = store.put_input(b"before the outage")
    store.ping()
    server.stop()

    for call in (lambda: store.get(key), lambda: store.put_input(b"during"), lambda: store.exists(key), store.ping):
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.retryable is True
        assert "unreachable" in info.value.message
