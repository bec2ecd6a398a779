"""The diff report of a re-process: which fields changed value between each re-processed
document's old and new result.

Kept while the re-process runs, not computed when asked: each re-processed job's after-end
step (:func:`diff_step`, :mod:`docproc.jobs.lifecycle`) reads its result and its original's,
compares them field by field (:func:`comparable_fields`: the extracted leaf fields for
``extract``, ``text`` for ``ocr``, ``tables`` for ``tables``) and records the outcome with
one Lua script, once per job: a rerun of the step (the sweep) counts nothing twice. Redis
layout, per re-process (deleted with it by :mod:`docproc.housekeeping.retention`)::

    docproc:batch:{id}:diff          hash  compared -> n, changed:<field> -> n, unchanged:<field> -> n
    docproc:batch:{id}:diffed        set   the jobs counted
    docproc:batch:{id}:diff_changes  hash  <field>\\0<k> -> the job id of <field>'s k-th change
                                           (k <= DIFF_LIST_MAX: ids, not values)

So :func:`diff_report` costs the same for ten documents or a million: one hash of counts,
and the old and new values of the changes it lists (``limit`` per field), read from storage
then. :func:`rebuild_diff` re-reads every pair (jobs in chunks, result pairs on threads) and
records what is missing: for a re-process whose after-end steps could not read storage
until the sweep gave up, or one made before the diff was kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from docproc.jobs.results import DocumentResult
from docproc.jobs.store import Job, _text
from docproc.submission.batches import DIFF_PARTS, Batch, BatchServices, BatchStore

if TYPE_CHECKING:
    import redis

    from docproc.base.storage import Storage
    from docproc.jobs import lifecycle

DIFF_LIST_DEFAULT = 100
DIFF_LIST_MAX = 10_000  # changes whose job id is kept per field (GET .../diff?limit= allows as many)
DIFF_CHUNK = 200  # re-processed jobs read per Redis round trip by rebuild_diff

# KEYS: batch, diff, diffed, diff_changes; ARGV: job id, most listed, then (field, '1' changed / '0')
# pairs -> 1 recorded, 0 counted before, -1 the re-process is gone (its keys are not made again)
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'compared', 1)
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '1' then
    local n = redis.call('HINCRBY', KEYS[2], 'changed:' .. ARGV[i], 1)
    if n <= tonumber(ARGV[2]) then redis.call('HSET', KEYS[4], ARGV[i] .. '\\0' .. n, ARGV[1]) end
  else
    redis.call('HINCRBY', KEYS[2], 'unchanged:' .. ARGV[i], 1)
  end
end
return 1
"""


class FieldDiff(BaseModel):
    changed: int = 0
    unchanged: int = 0
    changes: list[dict[str, Any]] = Field(default_factory=list, description="job_id, reprocess_of, old, new.")


class DiffReport(BaseModel):
    reprocess_id: str
    state: str
    compared: int = Field(description="Documents whose old and new results were both stored.")
    pending: int = Field(description="Re-processed documents without a result yet (or none at all).")
    fields: dict[str, FieldDiff]


# ---------------------------------------------------------------------------
# comparing two results
# ---------------------------------------------------------------------------


def comparable_fields(document: DocumentResult) -> dict[str, Any]:
    """What a diff compares, by field path: extract -> every leaf field (:func:`field_paths`);
    ocr -> ``text``; tables -> ``tables``."""
    out: dict[str, Any] = {}
    if document.fields is not None:
        out.update(field_paths(document.fields))
    if document.task == "ocr":
        out["text"] = "\n\n".join(p.text or "" for p in document.pages)
    if document.task == "tables":
        out["tables"] = [t.markdown for p in document.pages for t in (p.tables or [])]
    return out


def field_paths(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted path, so a diff names what changed (``vendor.iban``, not ``vendor``).

    A list of objects becomes one path per item field, ``line_items[].tax_rate``, whose value
    is the list of the items' values (``None`` when every item has none: a field a new
    schema version adds, left empty, is no change). Other lists are leaves.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(field_paths(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        keys = list(dict.fromkeys(k for item in value for k in item))
        columns = {k: [item.get(k) for item in value] for k in keys}
        return {f"{prefix}[].{k}": (None if all(v is None for v in column) else column)
                for k, column in columns.items()}
    return {prefix: value}


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, bool]]:
    """(field, changed) for every field either result has, by name."""
    return [(name, old.get(name) != new.get(name)) for name in sorted(set(old) | set(new))]


def read_pair(storage: Storage, job: Job, original: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparable fields of the original's and the re-processed job's results."""
    return tuple(comparable_fields(DocumentResult.model_validate_json(storage.get(j.result_key)))
                 for j in (original, job))


# ---------------------------------------------------------------------------
# keeping the diff as jobs end
# ---------------------------------------------------------------------------


def record(r: redis.Redis, batch_id: str, job_id: str, changes: Sequence[tuple[str, bool]]) -> int:
    """Count one re-processed document's comparison (once per job); see ``_RECORD``."""
    args: list[Any] = [job_id, DIFF_LIST_MAX]
    for name, changed in changes:
        args += [name, "1" if changed else "0"]
    keys = [BatchStore.key(batch_id), *(BatchStore.key(batch_id, part) for part in DIFF_PARTS)]
    return int(r.register_script(_RECORD)(keys=keys, args=args))


def diff_step(job: Job, ctx: lifecycle.Context) -> None:
    """After-end step: a re-processed job that ended with a result is compared with its
    original and counted in its re-process's diff (idempotent: once per job)."""
    if not (job.reprocess_of and job.batch_id and job.result_key):
        return
    original = ctx.store.load_many([job.reprocess_of])[0]
    if original is None or not original.result_key:
        return
    from docproc.base.storage import open_storage

    old, new = read_pair(ctx.storage or open_storage(ctx.settings), job, original)
    record(ctx.redis, job.batch_id, job.id, compare(old, new))


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def diff_report(svc: BatchServices, batch: Batch, *, limit: int = DIFF_LIST_DEFAULT) -> DiffReport:
    """Per field: how many documents changed value and (up to ``limit`` per field, in the
    order the jobs ended) which, with the old and new values read from storage now."""
    r = svc.redis
    counts = {_text(k): int(v) for k, v in r.hgetall(BatchStore.key(batch.id, "diff")).items()}
    names = sorted({k.split(":", 1)[1] for k in counts if k.startswith(("changed:", "unchanged:"))})
    fields = {n: FieldDiff(changed=counts.get(f"changed:{n}", 0), unchanged=counts.get(f"unchanged:{n}", 0))
              for n in names}
    slots = [(n, k) for n in names for k in range(1, min(limit, fields[n].changed, DIFF_LIST_MAX) + 1)]
    ids = [_text(v) for v in r.hmget(BatchStore.key(batch.id, "diff_changes"), [f"{n}\0{k}" for n, k in slots])] \
        if slots else []
    values = _read_pairs(svc, list(dict.fromkeys(i for i in ids if i)))
    for (name, _), job_id in zip(slots, ids, strict=True):
        if job_id in values:  # a job purged since is left out of the list (still counted)
            original_id, old, new = values[job_id]
            fields[name].changes.append({"job_id": job_id, "reprocess_of": original_id,
                                         "old": old.get(name), "new": new.get(name)})
    batch_counts = svc.batches.counts(batch.id)
    compared = counts.get("compared", 0)
    return DiffReport(reprocess_id=batch.id, state=batch_counts.state, compared=compared,
                      pending=max(0, batch_counts.total - compared), fields=fields)


def _read_pairs(svc: BatchServices, job_ids: list[str]) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """job id -> (its original's id, old fields, new fields), for the jobs whose pair is stored."""
    out: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    with _readers(svc) as pool:
        for chunk in _chunks(job_ids, DIFF_CHUNK):
            for job, original, (old, new) in _read(svc, pool, filter(None, _stored_pairs(svc, chunk))):
                out[job.id] = (original.id, old, new)
    return out


# ---------------------------------------------------------------------------
# rebuilding it from storage
# ---------------------------------------------------------------------------


def rebuild_diff(svc: BatchServices, batch: Batch, *, fresh: bool = False) -> int:
    """Compare every re-processed job whose pair is stored and record those not counted yet
    (``fresh``: forget the kept diff first and count everything again); returns how many
    were recorded. Jobs are read ``DIFF_CHUNK`` at a time and each chunk's result pairs by
    ``batch_expand_threads`` threads: storage latency / threads per document."""
    if fresh:
        svc.redis.delete(*(BatchStore.key(batch.id, part) for part in DIFF_PARTS))
    recorded = 0
    with _readers(svc) as pool:
        for chunk in _chunks((job_id for _, job_id in svc.batches.job_ids(batch.id)), DIFF_CHUNK):
            counted = svc.redis.smismember(BatchStore.key(batch.id, "diffed"), chunk)
            todo = [p for p, seen in zip(_stored_pairs(svc, chunk), counted, strict=True) if p and not seen]
            for job, _, (old, new) in _read(svc, pool, todo):
                recorded += record(svc.redis, batch.id, job.id, compare(old, new)) == 1
    return recorded


def _readers(svc: BatchServices) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(svc.settings.batch_expand_threads, thread_name_prefix="docproc-diff")


def _read(svc: BatchServices, pool: ThreadPoolExecutor, pairs: Iterable[tuple[Job, Job]]
          ) -> Iterator[tuple[Job, Job, tuple[dict[str, Any], dict[str, Any]]]]:
    """(job, original, (old fields, new fields)) per pair, the results read on ``pool``."""
    return pool.map(lambda pair: (*pair, read_pair(svc.storage, *pair)), pairs)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _stored_pairs(svc: BatchServices, job_ids: list[str]) -> list[tuple[Job, Job] | None]:
    """(re-processed job, its original) per id when both have a stored result, else None."""
    jobs = svc.store.load_many(job_ids)
    originals = svc.store.load_many([j.reprocess_of if j and j.reprocess_of else "" for j in jobs])
    return [(job, original) if job and original and job.result_key and original.result_key else None
            for job, original in zip(jobs, originals, strict=True)]


__all__ = ["DiffReport", "FieldDiff", "comparable_fields", "field_paths", "diff_step", "diff_report",
           "rebuild_diff"]
