"""Where inputs and results live: S3 (boto3) or a local directory.

Keys are logical (``inputs/sha256/ab/<sha256>``, ``results/<job>/document.json``) and
the same on every backend; an S3 prefix or a local root is added underneath. Inputs are
content-addressed and results are written once: re-processing writes new keys, a retry
that writes the same bytes again succeeds, a write of other bytes to a stored key fails.

Every backend fault surfaces as :class:`~docproc.base.errors.NotFound` (no such key) or
:class:`~docproc.base.errors.StorageError` (``retryable`` tells transient from permanent).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from docproc.base.errors import ConfigurationError, NotFound, StorageError

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit
INPUT_HEAD_OVER_BYTES = 1024 * 1024
"""S3 put_input: a larger document is looked up (HEAD) before it is uploaded, so one already
stored is not sent again; a smaller one costs one conditional PUT either way."""
EXPECT_CONTINUE_OVER_BYTES = 1024 * 1024
"""S3 PUTs of larger bodies ask ``Expect: 100-continue`` (botocore's default for every PUT):
the server may refuse before the body is sent. A smaller body (a page result, a document, a
typical input) goes with its headers: no wait for the interim answer, one round trip."""


def input_key(sha256_hex: str) -> str:
    """The content-addressed key of an input document."""
    return f"inputs/sha256/{sha256_hex[:2]}/{sha256_hex}"


def document_result_key(job_id: str) -> str:
    return f"results/{job_id}/document.json"


def page_result_key(job_id: str, page: int) -> str:
    return f"results/{job_id}/pages/{page:05d}.json"


def check_key(key: str) -> str:
    """A key is relative, '/'-separated, without empty, '.' or '..' parts; else StorageError."""
    parts = key.split("/") if isinstance(key, str) else []
    if (
        not parts
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in key
        or "\x00" in key
        or len(key) > 1024
    ):
        raise StorageError(f"invalid storage key {key!r}", retryable=False)
    return key


class Storage(Protocol):
    def put_input(self, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

    def put_result(self, key: str, data: bytes, content_type: str = "application/json") -> None: ...

    def exists(self, key: str) -> bool: ...

    def presign(self, key: str, expires_s: int) -> str | None: ...

    def ping(self) -> None: ...


# ---------------------------------------------------------------------------
# local directory
# ---------------------------------------------------------------------------


class LocalStorage:
    """Objects as files under ``root``; written to a temp file, then hard-linked into place
    (atomic, and fails if the name exists: write-once without a lock)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage directory {self.root}: {exc.strerror}", retryable=False) from exc

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside the root pointing out
            raise StorageError(f"invalid storage key {key!r}", retryable=False)
        return path

    def put_input(self, data: bytes) -> str:
        key = input_key(hashlib.sha256(data).hexdigest())
        self._write_once(key, data)
        return key

    def put_result(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._write_once(key, data)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"no stored object {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def presign(self, key: str, expires_s: int) -> str | None:
        return None

    def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"storage directory {self.root} is missing or not writable", retryable=False)

    def _write_once(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    self._same_or_refuse(key, path.read_bytes(), data)
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise StorageError(f"cannot write {key!r}: {exc.strerror}") from exc

    @staticmethod
    def _same_or_refuse(key: str, stored: bytes, data: bytes) -> None:
        if stored != data:
            raise StorageError(
                f"{key!r} is already stored with other content; results are never overwritten", retryable=False
            )


# ---------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "ConditionalRequestConflict",  # a concurrent conditional write to the same key
}


class S3Storage:
    """Objects in ``s3://bucket/prefix`` through boto3.

    Writes are conditional (``If-None-Match: *``): S3 itself refuses to replace a stored
    object, so two workers racing on one key cannot both win. The client retries transient
    faults (standard mode, 5 attempts); :meth:`ping` uses a second, single-attempt client
    with short timeouts so a health check answers within seconds.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Custom endpoints (moto, MinIO) are addressed path-style: virtual hosts need DNS.
        addressing = {"addressing_style": "path"} if endpoint_url else {}
        session = boto3.session.Session()

        def client(attempts: int, connect: float, read: float):
            config = Config(
                region_name=region,
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=connect,
                read_timeout=read,
                s3=addressing,
                signature_version="s3v4",
            )
            return session.client("s3", endpoint_url=endpoint_url, config=config)

        self._s3 = client(max_attempts, connect_timeout, read_timeout)
        # after botocore's own (more specific events run first; same event: registered order)
        self._s3.meta.events.register_last("before-call.s3", _expect_continue_only_when_large)
        self._ping_s3 = client(1, min(connect_timeout, 2.0), min(read_timeout, 5.0))

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_input(self, data: bytes) -> str:
        """One conditional PUT: a document already stored answers 412, and its key being its
        sha256 (S3 checks ``ChecksumSHA256``), it holds these bytes: nothing to compare. Over
        :data:`INPUT_HEAD_OVER_BYTES` a HEAD first skips uploading it again."""
        digest = hashlib.sha256(data).digest()
        key = input_key(digest.hex())
        if len(data) > INPUT_HEAD_OVER_BYTES and self.exists(key):
            return key
        self._put_once(key, data, "application/octet-stream", digest, content_addressed=True)
        return key

    def put_result(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._put_once(key, data, content_type)

    def get(self, key: str) -> bytes:
        full = self._full(key)
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()
        except Exception as exc:
            raise _storage_error(exc, f"get {key!r}") from exc

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self._s3.head_object(Bucket=self.bucket, Key=full)
            return True
        except Exception as exc:
            err = _storage_error(exc, f"head {key!r}")
            if isinstance(err, NotFound):
                return False
            raise err from exc

    def presign(self, key: str, expires_s: int) -> str | None:
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise StorageError(f"presign expiry must be 1..{MAX_PRESIGN_S} s, not {expires_s}", retryable=False)
        full = self._full(key)
        try:
            return self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires_s
            )
        except Exception as exc:
            raise _storage_error(exc, f"presign {key!r}") from exc

    def ping(self) -> None:
        try:
            self._ping_s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = _storage_error(exc, f"head bucket {self.bucket!r}")
            if isinstance(err, NotFound):
                err = StorageError(f"bucket {self.bucket!r} does not exist", retryable=False)
            raise err from exc

    def _put_once(self, key: str, data: bytes, content_type: str, sha256: bytes | None = None, *,
                  content_addressed: bool = False) -> None:
        full = self._full(key)
        checksum = base64.b64encode(sha256 or hashlib.sha256(data).digest()).decode("ascii")
        try:
            self._s3.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ContentType=content_type,
                ChecksumSHA256=checksum,
                IfNoneMatch="*",
            )
            return
        except Exception as exc:
            if _error_code(exc) not in ("PreconditionFailed", "412"):
                raise _storage_error(exc, f"put {key!r}") from exc
        if content_addressed:  # the key names its bytes: the stored object is these
            return
        # Stored already: fine when it is the same bytes (a retried task), refused otherwise.
        LocalStorage._same_or_refuse(key, self.get(key), data)


def _expect_continue_only_when_large(params, **kwargs) -> None:
    """botocore ``before-call`` hook, after its own: drop ``Expect: 100-continue`` from a
    request whose body is at most :data:`EXPECT_CONTINUE_OVER_BYTES`."""
    from botocore.utils import determine_content_length

    size = determine_content_length(params.get("body"))
    if size is not None and size <= EXPECT_CONTINUE_OVER_BYTES:
        params["headers"].pop("Expect", None)


def _error_code(exc: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return None


def _storage_error(exc: BaseException, what: str) -> NotFound | StorageError:
    """Map a boto3/botocore exception to NotFound or a StorageError (never leaks credentials)."""
    import urllib3
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        code = _error_code(exc) or ""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"no stored object ({what})")
        if code == "NoSuchBucket":
            return StorageError(f"{what}: the bucket does not exist", retryable=False)
        retryable = code in _TRANSIENT_CODES or status >= 500 or status == 429
        return StorageError(f"{what}: S3 answered {code or status}", retryable=retryable, s3_code=code)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"{what}: no S3 credentials configured", retryable=False)
    if isinstance(exc, (BotoConnectionError, HTTPClientError, urllib3.exceptions.HTTPError)):
        return StorageError(f"{what}: S3 unreachable ({type(exc).__name__})", retryable=True)
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {type(exc).__name__}", retryable=False)
    if isinstance(exc, OSError):
        return StorageError(f"{what}: {exc.strerror or type(exc).__name__}", retryable=True)
    if isinstance(exc, (NotFound, StorageError)):
        return exc
    raise exc


# ---------------------------------------------------------------------------


def open_storage(settings) -> LocalStorage | S3Storage:
    """The storage ``settings.storage_url`` names: ``s3://bucket[/prefix]`` or ``file://DIR``."""
    url = settings.storage_url
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ConfigurationError(f"storage_url {url!r} names no bucket")
        return S3Storage(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise ConfigurationError(f"storage_url {url!r} names no directory")
        return LocalStorage(path)
    raise ConfigurationError(f'storage_url {url!r}: use "s3://bucket/prefix" or "file:///dir"')
