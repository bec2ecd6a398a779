"""Jobs: the request a tenant submitted, its state, its pages; kept in Redis.

States::

    queued -> running -> succeeded | partial | failed
       \\---------\\----> canceled          (terminal states never change again)

Redis layout (one server with the Celery broker)::

    docproc:job:{id}            hash   doc (the job as created, JSON), state, counters
                                       (pages_done, pages_failed, remaining) and the fields
                                       set later, each JSON-encoded
    docproc:job:{id}:pages      hash   page:{n} -> PageStatus JSON (first record wins),
                                       attempts:{n} -> deliveries, seen:{n} -> who recorded it
    docproc:job:{id}:reprocesses zset  the jobs that re-processed this one (``reprocess_of``),
                                       scored by creation time (ms): the job's versions
    docproc:tenant:{t}:jobs     zset   job ids scored by creation time (ms)
    docproc:tenants             set    every tenant that made a job or batch (docproc.housekeeping.retention)
    docproc:idem:{t}:{key}      string {"job_id", "fingerprint"}, expires after idempotency_ttl_s
    docproc:outbox:ended        zset   job id -> ended at (ms): entered atomically with the
                                       terminal state, left once docproc.jobs.lifecycle ran the
                                       job's after-end steps (webhook event, batch count)
    docproc:active              zset   non-terminal job id -> last progress (ms, Redis's own
                                       clock): set by create, start, page_started and
                                       page_finished, removed by finish; docproc.housekeeping.watchdog
                                       reads the oldest ones instead of scanning every job

Every transition that can race (two deliveries of one page, a finish against a cancel) is
one Lua script, so Redis decides it atomically. redis-py may resend a command after a
dropped connection; the scripts that answer "who won" carry a per-call token so a resent
call gets its own first answer back, not a duplicate's.

The page path reads the job inside those steps instead of loading it apart: a page's first
start (job, lease, attempt: :meth:`JobStore.first_start`), the last page's record
(:meth:`JobStore.page_finished_loaded`) and the job's end (:meth:`JobStore.finish_loaded`)
each answer with the job, so each state change is one round trip.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from docproc.base.errors import (
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from docproc.base.settings import TENANT_RE
from docproc.base.timestamps import UtcTime
from docproc.jobs.results import EngineName, ErrorInfo, ResultWarning, Task

if TYPE_CHECKING:
    from docproc.jobs.leases import Lease

JobState = Literal["queued", "running", "succeeded", "partial", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "partial", "failed", "canceled"})
PageState = Literal["queued", "running", "succeeded", "failed"]

MAX_METADATA_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY = 255
MAX_LIST_LIMIT = 1000
MAX_LIST_SCAN = 10_000  # jobs examined per list call; past it the page ends early with a cursor
PAGE_DUPLICATE = -1  # page_finished: this page was already recorded; do not finalise
ENDED_OUTBOX = "docproc:outbox:ended"  # zset: job id -> ended at (ms), until its after-end steps ran
ACTIVE_JOBS = "docproc:active"  # zset: non-terminal job id -> last progress (Redis clock, ms); docproc.housekeeping.watchdog
TENANTS = "docproc:tenants"  # set: every tenant with jobs or batches (docproc.housekeeping.retention walks them)

_JOB_ID_LEN = 32
_HEX = frozenset("0123456789abcdef")


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class JobRequest(BaseModel):
    """What a client asked for (the body of POST /v1/jobs besides the file)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    task: Task = "ocr"
    schema_: str | None = Field(None, alias="schema", max_length=128)
    pages: str | None = Field(None, max_length=1000, description='Page range, e.g. "1-3,7" (default: all).')
    engine: EngineName = "auto"
    priority: Literal["high", "normal", "bulk"] = "normal"
    webhook_url: str | None = Field(None, max_length=2048)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Client data echoed back (<= 16 KiB as JSON).")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
        return value


class PageStatus(BaseModel):
    page: int
    state: PageState
    engine: str | None = None
    error: ErrorInfo | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    attempts: int = 0


class Job(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    id: str
    tenant: str
    state: JobState
    request: JobRequest
    filename: str | None = None
    input_key: str
    input_sha256: str
    size_bytes: int
    media_type: str | None = None
    page_count: int | None = None
    pages: list[int] = Field(default_factory=list, description="The selected pages, 1-based.")
    pages_done: int = 0
    pages_failed: int = 0
    created_at: UtcTime
    started_at: UtcTime | None = None
    finished_at: UtcTime | None = None
    error: ErrorInfo | None = None
    result_key: str | None = None
    schema_version: str | None = None
    model: str | None = None
    task_ids: list[str] = Field(default_factory=list)
    batch_id: str | None = Field(None, description="The batch (or re-process) this job belongs to.")
    reprocess_of: str | None = Field(None, description="The job whose stored input this re-process job re-reads.")
    request_id: str | None = Field(None, description="The X-Request-Id of the request that made the job "
                                   "(logs, task headers and webhooks carry it).")
    warnings: list[ResultWarning] = Field(default_factory=list, description="The document's warnings, known at "
                                          "intake (repaired: a damaged PDF, and the pages that lost content).")


# Fields written after creation, each stored JSON-encoded in its own hash field.
_LATER_FIELDS = (
    "started_at",
    "finished_at",
    "error",
    "result_key",
    "schema_version",
    "model",
    "page_count",
    "pages",
    "media_type",
    "task_ids",
    "warnings",
)
_COUNTERS = ("pages_done", "pages_failed")


# ---------------------------------------------------------------------------
# Lua
# ---------------------------------------------------------------------------

# Prefix of the scripts that record progress: touch_active(active zset, job key, only_listed)
# sets the job's last progress in ACTIVE_JOBS to Redis's own clock (ms), so the watchdog
# compares times from one clock; only_listed (ZADD XX) never re-lists an ended job.
_TOUCH_ACTIVE = """
local function touch_active(active, job_key, only_listed)
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local id = string.sub(job_key, string.len('docproc:job:') + 1)
  if only_listed then redis.call('ZADD', active, 'XX', ms, id) else redis.call('ZADD', active, ms, id) end
end
"""

# KEYS: job, tenant zset, active, tenants[, idem]; ARGV: id, score, idem value, idem ttl, tenant,
# field/value pairs...
_CREATE = _TOUCH_ACTIVE + """
if #KEYS == 5 then
  local prev = redis.call('GET', KEYS[5])
  if prev then return prev end
  redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[5])
touch_active(KEYS[3], KEYS[1], false)
return false
"""

# KEYS: job, active; ARGV: remaining, field/value pairs... -> 1 started (or already running), 0 refused, -1 missing
_START = _TOUCH_ACTIVE + """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return -1 end
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'remaining', ARGV[1], unpack(ARGV, 2))
  touch_active(KEYS[2], KEYS[1], false)
  return 1
end
if s == 'running' then return 1 end
return 0
"""

# KEYS: job, pages, active; ARGV: page -> attempts, or -1 when the job is missing
_PAGE_STARTED = _TOUCH_ACTIVE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
touch_active(KEYS[3], KEYS[1], true)
return redis.call('HINCRBY', KEYS[2], 'attempts:' .. ARGV[1], 1)
"""

# KEYS: job, pages, active[, lease]; ARGV: page, status JSON, page state, token[, lease token]
# -> remaining after this record; -1 duplicate; -2 job missing; -3 page not selected.
# The page's lease, when given, is released first, whatever the answer (compare-and-delete:
# only its owner's token; docproc.jobs.leases).
_PAGE_FINISHED_TEMPLATE = """
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local seen = redis.call('HGET', KEYS[2], 'seen:' .. ARGV[1])
if seen then
  local token, remaining = string.match(seen, '^(%S+) (%-?%d+)$')
  if token == ARGV[4] then return answer(tonumber(remaining)) end
  return -1
end
local pages = redis.call('HGET', KEYS[1], 'pages')
local selected = false
if pages then
  for _, p in ipairs(cjson.decode(pages)) do
    if tostring(p) == ARGV[1] then selected = true break end
  end
end
if not selected then return -3 end
redis.call('HSET', KEYS[2], 'page:' .. ARGV[1], ARGV[2])
if ARGV[3] == 'failed' then
  redis.call('HINCRBY', KEYS[1], 'pages_failed', 1)
else
  redis.call('HINCRBY', KEYS[1], 'pages_done', 1)
end
local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
redis.call('HSET', KEYS[2], 'seen:' .. ARGV[1], ARGV[4] .. ' ' .. remaining)
touch_active(KEYS[3], KEYS[1], true)
return answer(remaining)
"""
_PAGE_FINISHED = _TOUCH_ACTIVE + """
local function answer(remaining) return remaining end
""" + _PAGE_FINISHED_TEMPLATE
# The same, answering the last page's record (0 remaining) with {0, the job's hash as
# field/value pairs}: its finaliser needs no second read.
_PAGE_FINISHED_LOADED = _TOUCH_ACTIVE + """
local function answer(remaining)
  if remaining ~= 0 then return remaining end
  local job = redis.call('HGETALL', KEYS[1])
  table.insert(job, 1, 0)
  return job
end
""" + _PAGE_FINISHED_TEMPLATE

# KEYS: job, pages, active, lease; ARGV: page, lease token, lease ttl ms
# -> {code, the job's hash as field/value pairs...}, or {} when the job is missing. code 1:
# the page's first start: the lease taken (SET NX PX) and attempt 1 counted; 0: nothing
# taken (the job is terminal, or the page was started or recorded before); -1: the lease is
# held by another owner.
_FIRST_START = _TOUCH_ACTIVE + """
local job = redis.call('HGETALL', KEYS[1])
if #job == 0 then return {} end
local s = redis.call('HGET', KEYS[1], 'state')
local code = 0
if not (s == 'succeeded' or s == 'partial' or s == 'failed' or s == 'canceled')
   and redis.call('HEXISTS', KEYS[2], 'attempts:' .. ARGV[1]) == 0
   and redis.call('HEXISTS', KEYS[2], 'seen:' .. ARGV[1]) == 0 then
  if redis.call('SET', KEYS[4], ARGV[2], 'NX', 'PX', ARGV[3]) then
    touch_active(KEYS[3], KEYS[1], true)
    code = redis.call('HINCRBY', KEYS[2], 'attempts:' .. ARGV[1], 1)
  else
    code = -1
  end
end
table.insert(job, 1, code)
return job
"""

# KEYS: job, ended outbox, active; ARGV: state, token, now ms, job id, field/value pairs...
# -> 1 finished, 0 already terminal, -1 missing. The job enters the outbox in the same
# step, so its after-end steps (docproc.jobs.lifecycle) cannot be lost with the finisher; it
# leaves the active-jobs index (the watchdog's) in the same step too.
_FINISH_TEMPLATE = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return -1 end
if s == 'succeeded' or s == 'partial' or s == 'failed' or s == 'canceled' then
  if redis.call('HGET', KEYS[1], 'finish_token') == ARGV[2] then return ENDED end
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finish_token', ARGV[2], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
return ENDED
"""
_FINISH = _FINISH_TEMPLATE.replace("ENDED", "1")
# The same, answering "finished" with the job's hash as it ended (field/value pairs).
_FINISH_LOADED = _FINISH_TEMPLATE.replace("ENDED", "redis.call('HGETALL', KEYS[1])")

# KEYS: job, pages, tenant zset, ended outbox, its re-processes[, its original's re-processes];
# ARGV: id -> 1 purged, 0 kept (not ended, or its after-end steps still pending). A job whose
# record is already gone just leaves the indexes.
_PURGE = """
local s = redis.call('HGET', KEYS[1], 'state')
if s and s ~= 'succeeded' and s ~= 'partial' and s ~= 'failed' and s ~= 'canceled' then return 0 end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
redis.call('ZREM', KEYS[3], ARGV[1])
if #KEYS == 6 then redis.call('ZREM', KEYS[6], ARGV[1]) end
return 1
"""

# KEYS: active; ARGV: first, last index, job key prefix -> {ids seen, queued, running}.
# Reads the job hashes of a slice of the active-jobs index (their keys derive from it).
_COUNT_ACTIVE = """
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local queued, running = 0, 0
for _, id in ipairs(ids) do
  local s = redis.call('HGET', ARGV[3] .. id, 'state')
  if s == 'queued' then queued = queued + 1 elseif s == 'running' then running = running + 1 end
end
return {#ids, queued, running}
"""

# KEYS: job; ARGV: task ids... -> 1 added, 0 missing. Appends the ids not yet listed to
# the JSON list in field task_ids, in one step (the API and the intake both add ids).
_ADD_TASK_IDS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local raw = redis.call('HGET', KEYS[1], 'task_ids')
local ids = {}
local seen = {}
if raw and raw ~= 'null' and raw ~= '[]' then
  for _, id in ipairs(cjson.decode(raw)) do ids[#ids + 1] = id; seen[id] = true end
end
for _, id in ipairs(ARGV) do
  if not seen[id] then ids[#ids + 1] = id; seen[id] = true end
end
if #ids > 0 then redis.call('HSET', KEYS[1], 'task_ids', cjson.encode(ids)) end
return 1
"""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


_id_lock = threading.Lock()
_last_id: tuple[int, int] = (-1, 0)


def new_job_id(ms: int | None = None) -> str:
    """32 hex chars: 12 of creation time in ms, then 80 random bits; sorts by creation time.

    Monotonic within a process (ULID-style): a second id in the same millisecond takes the
    previous random part + 1, so one API process's jobs list in exactly the order made.
    """
    global _last_id
    ms = int(time.time() * 1000) if ms is None else ms
    with _id_lock:
        last_ms, last_rand = _last_id
        rand = last_rand + 1 if ms == last_ms and last_rand + 1 < 1 << 80 else secrets.randbits(80)
        _last_id = (ms, rand)
    return f"{ms:012x}{rand:020x}"


def _is_job_id(value: str) -> bool:
    return isinstance(value, str) and len(value) == _JOB_ID_LEN and set(value) <= _HEX


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:  # naive datetimes are taken as UTC
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, datetime):
        return json.dumps(value.astimezone(UTC).isoformat())
    return json.dumps(value, separators=(",", ":"))


def _pairs(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out += [name, _json(value)]
    return out


def _encode_cursor(score: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split(":")
        if not _is_job_id(job_id):
            raise ValueError(job_id)
        return int(score), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest("invalid cursor") from exc


def service_errors(method):
    """Redis faults (down, loading, out of memory, read-only) -> ServiceUnavailable."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise ServiceUnavailable(f"job store unavailable ({type(exc).__name__})") from exc

    return wrapper


def connect_redis(settings) -> redis.Redis:
    """A Redis client for ``settings.redis_url`` with timeouts, returning str."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
    )


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------


class JobStore:
    """Jobs in Redis. Tenant-facing reads (``get``, ``list``, ``cancel``) never show another
    tenant's job; worker-side calls take a job id alone."""

    def __init__(self, redis_client: redis.Redis, settings) -> None:
        self._r = redis_client
        self._settings = settings
        self._create = redis_client.register_script(_CREATE)
        self._start = redis_client.register_script(_START)
        self._page_started = redis_client.register_script(_PAGE_STARTED)
        self._first_start = redis_client.register_script(_FIRST_START)
        self._page_finished = redis_client.register_script(_PAGE_FINISHED)
        self._page_finished_loaded = redis_client.register_script(_PAGE_FINISHED_LOADED)
        self._finish = redis_client.register_script(_FINISH)
        self._finish_loaded = redis_client.register_script(_FINISH_LOADED)
        self._add_task_ids = redis_client.register_script(_ADD_TASK_IDS)
        self._purge = redis_client.register_script(_PURGE)

    @property
    def redis(self) -> redis.Redis:
        """The Redis client (the page leases, docproc.jobs.leases, live beside the jobs)."""
        return self._r

    # --- keys --------------------------------------------------------------
    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"docproc:job:{job_id}"

    @staticmethod
    def _pages_key(job_id: str) -> str:
        return f"docproc:job:{job_id}:pages"

    @staticmethod
    def _reprocesses_key(job_id: str) -> str:
        return f"docproc:job:{job_id}:reprocesses"

    @staticmethod
    def _tenant_key(tenant: str) -> str:
        return f"docproc:tenant:{tenant}:jobs"

    @staticmethod
    def _idem_key(tenant: str, key: str) -> str:
        return f"docproc:idem:{tenant}:{key}"

    # --- create / read -------------------------------------------------------
    @service_errors
    def create(
        self,
        tenant: str,
        request: JobRequest,
        *,
        input_key: str,
        input_sha256: str,
        size_bytes: int,
        filename: str | None,
        idempotency_key: str | None,
        fingerprint: str,
        media_type: str | None = None,
        batch_id: str | None = None,
        reprocess_of: str | None = None,
        request_id: str | None = None,
        task_ids: list[str] | None = None,
    ) -> tuple[Job, bool]:
        """A new queued job, or (same Idempotency-Key and fingerprint) the job made before.

        Returns (job, created). The same key with another fingerprint raises
        IdempotencyConflict. The job and its key are written by one script, so two
        concurrent requests with one key make one job. ``task_ids``: Celery task ids
        the new job starts with (its intake's, chosen before it is sent).
        """
        _check_tenant(tenant)
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
        ):
            raise InvalidRequest(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} printable characters")
        now = _now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        ms = _ms(now)
        job = Job(
            id=new_job_id(ms),
            tenant=tenant,
            state="queued",
            request=request,
            filename=filename,
            input_key=input_key,
            input_sha256=input_sha256,
            size_bytes=size_bytes,
            media_type=media_type,
            created_at=now,
            batch_id=batch_id,
            reprocess_of=reprocess_of,
            request_id=request_id,
            task_ids=list(task_ids or ()),
        )
        keys = [self._job_key(job.id), self._tenant_key(tenant), ACTIVE_JOBS, TENANTS]
        idem_value = ""
        if idempotency_key is not None:
            keys.append(self._idem_key(tenant, idempotency_key))
            idem_value = json.dumps({"job_id": job.id, "fingerprint": fingerprint})
        fields = [
            "doc", job.model_dump_json(),
            "tenant", tenant,
            "state", "queued",
            "pages_done", "0",
            "pages_failed", "0",
        ]  # fmt: skip
        if job.task_ids:  # the field _ADD_TASK_IDS appends to
            fields += ["task_ids", _json(job.task_ids)]
        for _ in range(2):
            prev = self._create(keys=keys, args=[job.id, ms, idem_value, self._settings.idempotency_ttl_s, tenant,
                                                 *fields])
            if prev is None:
                return self._linked(job), True
            record = json.loads(_text(prev))
            if record["job_id"] == job.id:  # our own write, answered again after a resend
                return self._linked(job), True
            if record["fingerprint"] != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a different request", job_id=record["job_id"]
                )
            try:
                return self._linked(self.load(record["job_id"])), False
            except NotFound:  # the key outlived its job: forget it and create anew
                self._r.delete(keys[4])
        raise ServiceUnavailable("could not create the job (idempotency key contended)")

    def _linked(self, job: Job) -> Job:
        """List a re-process job among its original's versions. Also on an idempotent repeat:
        a creator that died between the two writes links its job when its task runs again."""
        if job.reprocess_of:
            self._r.zadd(self._reprocesses_key(job.reprocess_of), {job.id: _ms(job.created_at)})
        return job

    @service_errors
    def versions(self, tenant: str, job_id: str, limit: int = MAX_LIST_LIMIT) -> list[Job]:
        """Every version of the tenant's document ``job_id`` belongs to, oldest first: the first
        job on it (followed up the ``reprocess_of`` links while they exist) and every job that
        re-processed it, directly or through another re-process; at most ``limit``."""
        job = self.get(tenant, job_id)
        for _ in range(64):  # a chain of re-processes of re-processes; a purged original ends it
            parent = self.load_many([job.reprocess_of])[0] if job.reprocess_of else None
            if parent is None or parent.tenant != tenant:
                break
            job = parent
        found, frontier = [job], [job.id]
        while frontier and len(found) < limit:
            pipe = self._r.pipeline(transaction=False)
            for parent_id in frontier:
                pipe.zrange(self._reprocesses_key(parent_id), 0, limit - 1)
            ids = [_text(m) for members in pipe.execute() for m in members][: limit - len(found)]
            children = [j for j in self.load_many(ids) if j is not None and j.tenant == tenant]
            found += children
            frontier = [j.id for j in children]
        return sorted(found, key=lambda j: (j.created_at, j.id))

    @service_errors
    def load(self, job_id: str) -> Job:
        """The job, for workers (no tenant check). NotFound if there is none."""
        if not _is_job_id(job_id):
            raise NotFound(f"no job {job_id!r}")
        raw = self._r.hgetall(self._job_key(job_id))
        if not raw:
            raise NotFound(f"no job {job_id!r}")
        return _job_from_hash(raw)

    @service_errors
    def load_many(self, job_ids: list[str]) -> list[Job | None]:
        """The jobs (None for a missing one), in one round trip; for workers (no tenant check)."""
        rows = [(job_id, 0) for job_id in job_ids if _is_job_id(job_id)]
        found = {job_id: job for job_id, _, job in self._with_jobs(rows)}
        return [found.get(job_id) for job_id in job_ids]

    @service_errors
    def ended(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` are terminal or gone, in one round trip (the model worker's
        cancel check over the pages it has in flight)."""
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self._job_key(job_id), "state")
        states = pipe.execute()
        return {job_id for job_id, state in zip(job_ids, states) if state is None or _text(state) in TERMINAL}

    def get(self, tenant: str, job_id: str) -> Job:
        """The tenant's job; another tenant's id is NotFound exactly like a missing one."""
        job = self.load(job_id)
        if job.tenant != tenant:
            raise NotFound(f"no job {job_id!r}")
        return job

    @service_errors
    def list(
        self,
        tenant: str,
        *,
        state: str | None = None,
        schema: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Job], str | None]:
        """The tenant's jobs, newest first, filtered (created_from <= created_at <= created_to).

        Returns (jobs, next cursor or None at the end). Filters are applied while paging:
        a page holds ``limit`` matches unless the end (or MAX_LIST_SCAN examined jobs) is reached.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be 1..{MAX_LIST_LIMIT}")
        if state is not None and state not in JobState.__args__:
            raise InvalidRequest(f"unknown state {state!r}")
        key = self._tenant_key(tenant)
        lo = _ms(created_from) if created_from is not None else "-inf"
        hi: int | str = _ms(created_to) if created_to is not None else "+inf"
        after: tuple[int, str] | None = _decode_cursor(cursor) if cursor else None

        matches: list[tuple[Job, int]] = []
        scanned = 0
        for job_id, score, job in self._scan(key, hi, lo, after):
            scanned += 1
            if job is not None and job.tenant == tenant:
                if (state is None or job.state == state) and (schema is None or job.request.schema_ == schema):
                    matches.append((job, score))
                    if len(matches) > limit:
                        break
            if scanned >= MAX_LIST_SCAN and len(matches) < limit:
                return [j for j, _ in matches], _encode_cursor(score, job_id)
        if len(matches) > limit:
            last_job, last_score = matches[limit - 1]
            return [j for j, _ in matches[:limit]], _encode_cursor(last_score, last_job.id)
        return [j for j, _ in matches], None

    def _scan(self, key: str, hi: int | str, lo: int | str, after: tuple[int, str] | None, batch: int = 200):
        """Yield (id, score, job or None) from the zset in (score, id) descending order, strictly
        after ``after``. Ties on a score are fetched whole, so no id is skipped or repeated."""
        if after is not None:
            a_score, a_id = after
            if (hi == "+inf" or a_score <= int(hi)) and (lo == "-inf" or a_score >= int(lo)):
                same = [m for m in map(_text, self._r.zrevrangebyscore(key, a_score, a_score)) if m < a_id]
                yield from self._with_jobs([(m, a_score) for m in same])
                hi = f"({a_score}"
        while True:
            found = self._r.zrevrangebyscore(key, hi, lo, start=0, num=batch, withscores=True)
            rows = [(_text(m), int(s)) for m, s in found]
            if not rows:
                return
            if len(rows) < batch:
                yield from self._with_jobs(rows)
                return
            last = rows[-1][1]
            head = [r for r in rows if r[1] != last]
            if head:  # the rows at the last score may continue past this batch: fetch them next time
                yield from self._with_jobs(head)
                hi = last
            else:  # a whole batch on one score: take every member of that score
                tied = [(_text(m), last) for m in self._r.zrevrangebyscore(key, last, last)]
                yield from self._with_jobs(tied)
                hi = f"({last}"

    def _with_jobs(self, rows: list[tuple[str, int]]):
        pipe = self._r.pipeline(transaction=False)
        for job_id, _ in rows:
            pipe.hgetall(self._job_key(job_id))
        for (job_id, score), raw in zip(rows, pipe.execute(), strict=True):
            yield job_id, score, (_job_from_hash(raw) if raw else None)

    # --- worker side ---------------------------------------------------------
    @service_errors
    def start(self, job_id: str, *, page_count: int, pages: list[int], media_type: str | None,
              warnings: list[ResultWarning] | None = None) -> bool:
        """queued -> running with its selected pages (and the document's warnings, e.g.
        ``repaired``). True also when already running (a redelivered intake: nothing is
        reset); False when canceled or otherwise terminal."""
        fields = {"started_at": _now(), "page_count": page_count, "pages": list(pages), "media_type": media_type,
                  "warnings": [w.model_dump(mode="json") for w in warnings or ()]}
        result = self._start(keys=[self._job_key(job_id), ACTIVE_JOBS], args=[len(pages), *_pairs(fields)])
        if result == -1:
            raise NotFound(f"no job {job_id!r}")
        return result == 1

    @service_errors
    def first_start(self, job_id: str, page: int, *, lease_key: str, token: str, ttl_ms: int) -> tuple[Job, int]:
        """A page delivery's first checks in one step, for the common case, the page's first
        start: the job and, when it is not terminal and the page was neither started nor
        recorded before, the page's lease ``lease_key`` taken for ``token`` (SET NX PX
        ``ttl_ms``, :mod:`docproc.jobs.leases`) and its first attempt counted.

        Returns (job, 1) for such a first start; (job, 0) when it took nothing (the job is
        terminal, or the page was started before: the caller goes the long way, with
        :meth:`page_started`); (job, -1) when another owner holds the lease. NotFound when
        there is no job."""
        if not _is_job_id(job_id):
            raise NotFound(f"no job {job_id!r}")
        reply = self._first_start(keys=[self._job_key(job_id), self._pages_key(job_id), ACTIVE_JOBS, lease_key],
                                  args=[int(page), token, int(ttl_ms)])
        if not reply:
            raise NotFound(f"no job {job_id!r}")
        return _job_from_hash(_flat_hash(reply[1:])), int(reply[0])

    @service_errors
    def page_started(self, job_id: str, page: int) -> int:
        """Count one more delivery of the page; returns its attempts so far (poison guard)."""
        result = self._page_started(
            keys=[self._job_key(job_id), self._pages_key(job_id), ACTIVE_JOBS], args=[int(page)]
        )
        if result == -1:
            raise NotFound(f"no job {job_id!r}")
        return int(result)

    @service_errors
    def page_finished(self, job_id: str, status: PageStatus, *, lease: Lease | None = None) -> int:
        """Record a page's outcome once and return the pages still unrecorded.

        The caller that gets 0 finalises the job. A page recorded before (a redelivered
        task) changes nothing and returns PAGE_DUPLICATE (-1), so no second finaliser.
        ``lease``: the page's lease the caller holds, released in the same step.
        """
        return self._record_page(job_id, status, self._page_finished, lease)[0]

    @service_errors
    def page_finished_loaded(self, job_id: str, status: PageStatus, *,
                             lease: Lease | None = None) -> tuple[int, Job | None]:
        """:meth:`page_finished`, answering the last page's record (0 remaining) with the job
        as it was then, read in the same step (for its finaliser): (remaining, job or None)."""
        return self._record_page(job_id, status, self._page_finished_loaded, lease)

    def _record_page(self, job_id: str, status: PageStatus, script, lease: Lease | None) -> tuple[int, Job | None]:
        keys = [self._job_key(job_id), self._pages_key(job_id), ACTIVE_JOBS]
        args = [int(status.page), status.model_dump_json(), status.state, uuid.uuid4().hex]
        if lease is not None:
            keys.append(lease.key)
            args.append(lease.token)
        reply = script(keys=keys, args=args)
        if lease is not None:
            lease.released_elsewhere()
        job = None
        if isinstance(reply, list):
            reply, job = reply[0], _job_from_hash(_flat_hash(reply[1:]))
        result = int(reply)
        if result == -2:
            raise NotFound(f"no job {job_id!r}")
        if result == -3:
            raise InvalidRequest(f"page {status.page} is not a selected page of job {job_id}")
        return result, job

    def pages(self, job_id: str) -> list[PageStatus]:
        """Every selected page's status, in page order (queued / running / finished)."""
        return self._load_with_pages(job_id)[1]

    def get_with_pages(self, tenant: str, job_id: str) -> tuple[Job, list[PageStatus]]:
        """``get`` and ``pages`` together, in one Redis round trip."""
        job, pages = self._load_with_pages(job_id)
        if job.tenant != tenant:
            raise NotFound(f"no job {job_id!r}")
        return job, pages

    @service_errors
    def _load_with_pages(self, job_id: str) -> tuple[Job, list[PageStatus]]:
        if not _is_job_id(job_id):
            raise NotFound(f"no job {job_id!r}")
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self._job_key(job_id))
        pipe.hgetall(self._pages_key(job_id))
        raw_job, raw_pages = pipe.execute()
        if not raw_job:
            raise NotFound(f"no job {job_id!r}")
        job = _job_from_hash(raw_job)
        return job, _page_statuses(job, raw_pages)

    @service_errors
    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: ErrorInfo | None = None,
        result_key: str | None = None,
        model: str | None = None,
        schema_version: str | None = None,
    ) -> bool:
        """Move a non-terminal job to a terminal ``state``; False if it already was terminal
        (a canceled job stays canceled, a finished one is not finished twice)."""
        fields = _finish_fields(error=error, result_key=result_key, model=model, schema_version=schema_version)
        return self._end(job_id, state, fields, self._finish) == 1

    @service_errors
    def finish_loaded(self, job_id: str, state: str, **fields: Any) -> Job | None:
        """:meth:`finish` (``fields``: its keywords), answering with the job as this call
        ended it (read in the same step), or None when it already was terminal."""
        result = self._end(job_id, state, _finish_fields(**fields), self._finish_loaded)
        return _job_from_hash(_flat_hash(result)) if isinstance(result, list) else None

    def _end(self, job_id: str, state: str, fields: dict[str, Any], script) -> Any:
        if state not in TERMINAL:
            raise ValueError(f"finish() needs a terminal state, not {state!r}")
        result = self._finish_script(job_id, state, fields, script)
        if result == -1:
            raise NotFound(f"no job {job_id!r}")
        return result

    def _finish_script(self, job_id: str, state: str, fields: dict[str, Any], script=None) -> Any:
        now = _now()
        return (script or self._finish)(
            keys=[self._job_key(job_id), ENDED_OUTBOX, ACTIVE_JOBS],
            args=[state, uuid.uuid4().hex, _ms(now), job_id, *_pairs({"finished_at": now, **fields})],
        )

    def cancel(self, tenant: str, job_id: str) -> tuple[Job, bool]:
        """queued/running -> canceled; a terminal job is returned unchanged.
        Returns the job and whether this call canceled it."""
        self.get(tenant, job_id)
        canceled = self._cancel(job_id)
        return self.load(job_id), canceled

    @service_errors
    def _cancel(self, job_id: str) -> bool:
        return self._finish_script(job_id, "canceled", {}) == 1

    # --- the ended outbox (docproc.jobs.lifecycle) --------------------------------
    @service_errors
    def ended_pending(self, older_than_ms: int, limit: int = 500) -> list[str]:
        """Jobs ended at or before ``older_than_ms`` whose after-end steps are not done."""
        return list(self._r.zrangebyscore(ENDED_OUTBOX, "-inf", older_than_ms, start=0, num=limit))

    @service_errors
    def ended_handled(self, job_id: str) -> None:
        """The job's after-end steps all ran: it leaves the outbox."""
        self._r.zrem(ENDED_OUTBOX, job_id)

    def count_active(self, chunk: int = 5000) -> dict[str, int]:
        """Jobs not yet ended, by state (``{"queued": n, "running": m}``), from the
        active-jobs index (the API's /metrics). Counted inside Redis, ``chunk`` jobs per
        script call, so Redis is never held long; a job moving meanwhile may be missed."""
        script = self._r.register_script(_COUNT_ACTIVE)
        counts = {"queued": 0, "running": 0}
        start = 0
        while True:
            seen, queued, running = script(keys=[ACTIVE_JOBS], args=[start, start + chunk - 1, "docproc:job:"])
            counts["queued"] += int(queued)
            counts["running"] += int(running)
            if int(seen) < chunk:
                return counts
            start += chunk

    # --- retention (docproc.housekeeping.retention) --------------------------------------
    @service_errors
    def created_before(self, tenant: str, before_ms: int, *, start: int, count: int) -> list[tuple[str, Job | None]]:
        """A slice (oldest first, from index ``start``) of the tenant's jobs created before
        ``before_ms``, with each job (None when its record is gone)."""
        rows = self._r.zrangebyscore(self._tenant_key(tenant), "-inf", f"({before_ms}", start=start, num=count,
                                     withscores=True)
        return [(job_id, job) for job_id, _, job in self._with_jobs([(_text(m), int(s)) for m, s in rows])]

    @service_errors
    def purge(self, tenant: str, job_id: str, reprocess_of: str | None = None) -> bool:
        """Delete an ended job's records (job, pages, its list of re-processes) and its index
        entries (the tenant's, and ``reprocess_of``'s list of versions); False (kept) when it is
        not ended or its after-end steps have not run yet."""
        keys = [self._job_key(job_id), self._pages_key(job_id), self._tenant_key(tenant), ENDED_OUTBOX,
                self._reprocesses_key(job_id)]
        if reprocess_of:
            keys.append(self._reprocesses_key(reprocess_of))
        return self._purge(keys=keys, args=[job_id]) == 1

    @service_errors
    def add_task_ids(self, job_id: str, ids: list[str]) -> None:
        """Record Celery task ids of the job (for revoking on cancel); atomic, duplicates ignored."""
        if not self._add_task_ids(keys=[self._job_key(job_id)], args=list(ids)):
            raise NotFound(f"no job {job_id!r}")


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise InvalidRequest(f"invalid tenant name {tenant!r}")


def _page_statuses(job: Job, raw_pages: dict) -> list[PageStatus]:
    raw = {_text(k): _text(v) for k, v in raw_pages.items()}
    out: list[PageStatus] = []
    for page in job.pages:
        attempts = int(raw.get(f"attempts:{page}", 0))
        record = raw.get(f"page:{page}")
        if record is not None:
            status = PageStatus.model_validate_json(record)
            status.attempts = max(status.attempts, attempts)
        else:
            status = PageStatus(page=page, state="running" if attempts else "queued", attempts=attempts)
        out.append(status)
    return out


def _finish_fields(*, error: ErrorInfo | None = None, result_key: str | None = None, model: str | None = None,
                   schema_version: str | None = None) -> dict[str, Any]:
    return {"error": error.model_dump() if error is not None else None, "result_key": result_key, "model": model,
            "schema_version": schema_version}


def _flat_hash(pairs: list) -> dict:
    """A hash as a script returns it (field, value, field, value ...) -> a dict."""
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def _job_from_hash(raw: dict) -> Job:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    data = json.loads(fields["doc"])
    data["state"] = fields["state"]
    for name in _COUNTERS:
        data[name] = int(fields.get(name, 0))
    for name in _LATER_FIELDS:
        if name in fields:
            data[name] = json.loads(fields[name])
    return Job.model_validate(data)
