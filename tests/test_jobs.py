"""docproc/jobs/store.py against a real redis-server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from docproc.base.errors import (
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    WebhookUrlRefused,
)
from docproc.base.settings import Settings
from docproc.delivery.webhooks import check_webhook
from docproc.jobs.results import ErrorInfo
from docproc.jobs.store import (
    ACTIVE_JOBS,
    ENDED_OUTBOX,
    PAGE_DUPLICATE,
    TERMINAL,
    JobRequest,
    JobStore,
    PageStatus,
    connect_redis,
    new_job_id,
)


@pytest.fixture
def store(redis_client, redis_server) -> JobStore:
    return JobStore(redis_client, Settings(_env_file=None, redis_url=redis_server.url))


def make(store: JobStore, tenant: str = "acme", *, request: JobRequest | None = None, key=None, fp="fp", sha="ab" * 32):
    return store.create(
        tenant,
        request or JobRequest(),
        input_key=f"inputs/sha256/{sha[:2]}/{sha}",
        input_sha256=sha,
        size_bytes=1234,
        filename="invoice.pdf",
        idempotency_key=key,
        fingerprint=fp,
    )


def started(store: JobStore, pages=(1, 2, 3)):
    job, _ = make(store)
    assert store.start(job.id, page_count=max(pages), pages=list(pages), media_type="application/pdf")
    return job


def page(n: int, state: str = "succeeded") -> PageStatus:
    return PageStatus(page=n, state=state, engine="text", timings_ms={"render": 1.5})


# --- models -------------------------------------------------------------------


def test_job_request_validation():
    request = JobRequest.model_validate({"task": "extract", "schema": "invoice", "priority": "bulk"})
    assert request.schema_ == "invoice"
    assert request.model_dump()["schema"] == "invoice"  # the wire name, both ways
    for bad in ({"task": "translate"}, {"unknown": 1},
                {"metadata": {"blob": "x" * 17_000}}, {"priority": "urgent"}):  # fmt: skip
        with pytest.raises(ValidationError):
            JobRequest.model_validate(bad)
    JobRequest.model_validate({"metadata": {"blob": "x" * 16_000}})
    # a webhook URL that is not http(s) is the SSRF guard's to refuse, with its documented code
    with pytest.raises(WebhookUrlRefused) as info:
        check_webhook(JobRequest.model_validate({"webhook_url": "file:///etc/passwd"}).webhook_url, "t",
                      Settings(_env_file=None))
    assert info.value.details["reason"] == "scheme"


def test_job_ids_sort_by_creation_time():
    ids = [new_job_id(ms) for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000)]
    assert ids == sorted(ids) and all(len(i) == 32 for i in ids)
    assert len({new_job_id(5) for _ in range(1000)}) == 1000


# --- create / get --------------------------------------------------------------


def test_create_and_get_round_trip(store):
    request = JobRequest(task="extract", schema_="invoice", pages="1-2", metadata={"po": "4711"})
    job, created = make(store, request=request)
    assert created and job.state == "queued"
    got = store.get("acme", job.id)
    assert got == job
    assert got.request.schema_ == "invoice" and got.request.metadata == {"po": "4711"}
    assert got.created_at.tzinfo is not None and abs(got.created_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert got.id[:12] == f"{int(got.created_at.timestamp() * 1000):012x}"


def test_another_tenants_job_is_not_found_like_a_missing_one(store):
    job, _ = make(store, "acme")
    missing_id = new_job_id()
    with pytest.raises(NotFound) as other:
        store.get("globex", job.id)
    with pytest.raises(NotFound) as missing:
        store.get("globex", missing_id)
    assert other.value.message == f"no job {job.id!r}" and missing.value.message == f"no job {missing_id!r}"
    for junk in ("../../etc", "", "x" * 32, job.id.upper()):
        with pytest.raises(NotFound):
            store.get("acme", junk)
    with pytest.raises(NotFound):
        store.cancel("globex", job.id)
    assert store.get("acme", job.id).state == "queued"  # untouched by the other tenant
    assert store.list("globex") == ([], None)


def test_invalid_tenant_names_are_refused(store):
    for tenant in ("", "a:b", "a b", "x" * 65):
        with pytest.raises(InvalidRequest):
            make(store, tenant)


def test_idempotency_key_replays_and_conflicts(store, redis_client):
    first, created = make(store, key="order-17", fp="fp-1")
    again, created_again = make(store, key="order-17", fp="fp-1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict) as info:
        make(store, key="order-17", fp="fp-2")
    assert info.value.http_status == 409
    other_tenant, created_other = make(store, "globex", key="order-17", fp="fp-2")
    assert created_other and other_tenant.id != first.id  # keys are per tenant
    ttl = redis_client.ttl("docproc:idem:acme:order-17")
    assert 0 < ttl <= 86400
    with pytest.raises(InvalidRequest):
        make(store, key="x" * 256)


def test_concurrent_creates_with_one_key_make_one_job(store):
    results = []
    barrier = threading.Barrier(8)

    def submit():
        barrier.wait()
        results.append(make(store, key="same", fp="same-fp"))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list("acme")[0]) == 1


def test_idempotency_key_that_outlived_its_job_makes_a_new_one(store, redis_client):
    job, _ = make(store, key="k1")
    redis_client.delete(f"docproc:job:{job.id}")
    again, created = make(store, key="k1")
    assert created and again.id != job.id


# --- list ------------------------------------------------------------------------


def test_list_pages_through_120_jobs_newest_first_with_filters(store):
    ids = []
    for i in range(120):
        request = JobRequest(task="extract", schema_="invoice" if i % 3 == 0 else "receipt")
        job, _ = make(store, request=request)
        ids.append(job.id)
        if i % 4 == 0:
            store.finish(job.id, "failed", error=ErrorInfo(code="corrupt_document", message="x"))
    make(store, "globex")  # another tenant's job never shows

    seen, cursor, pages = [], None, 0
    while True:
        batch, cursor = store.list("acme", cursor=cursor, limit=25)
        seen += [j.id for j in batch]
        pages += 1
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 5  # 25+25+25+25+20, no repeats, no gaps

    invoices_failed = [i for n, i in enumerate(ids) if n % 3 == 0 and n % 4 == 0][::-1]
    got, cursor = [], None
    while True:
        batch, cursor = store.list("acme", state="failed", schema="invoice", cursor=cursor, limit=3)
        assert len(batch) == 3 or cursor is None
        got += [j.id for j in batch]
        if cursor is None:
            break
    assert got == invoices_failed and len(got) == 10
    only_queued, _ = store.list("acme", state="queued", limit=1000)
    assert len(only_queued) == 90 and all(j.state == "queued" for j in only_queued)


def test_list_by_created_range_and_same_millisecond_ties(store, redis_client):
    """Jobs sharing one creation millisecond page correctly (ties broken by id)."""
    jobs = [make(store)[0] for _ in range(30)]
    ms = 1_750_000_000_000
    for n, job in enumerate(jobs):  # squeeze them into 3 milliseconds, 10 jobs each
        redis_client.zadd("docproc:tenant:acme:jobs", {job.id: ms + n // 10})
    seen, cursor = [], None
    while True:
        batch, cursor = store.list("acme", cursor=cursor, limit=4)
        seen += [j.id for j in batch]
        if cursor is None:
            break
    assert sorted(seen) == sorted(j.id for j in jobs) and len(seen) == 30

    t = datetime.fromtimestamp((ms + 1) / 1000, UTC)
    middle, _ = store.list("acme", created_from=t, created_to=t, limit=100)
    assert {j.id for j in middle} == {j.id for j in jobs[10:20]}
    later, _ = store.list("acme", created_from=t, limit=100)
    assert len(later) == 20


def test_list_rejects_bad_arguments(store):
    for kwargs in ({"limit": 0}, {"limit": 5000}, {"cursor": "!!not-base64"}, {"cursor": "Zm9vOmJhcg"},
                   {"state": "exploded"}):  # fmt: skip
        with pytest.raises(InvalidRequest):
            store.list("acme", **kwargs)


# --- worker side: start, pages, finish, cancel ------------------------------------------


def test_start_sets_pages_and_is_refused_after_cancel(store):
    job = started(store, pages=(2, 4))
    running = store.load(job.id)
    assert running.state == "running" and running.pages == [2, 4] and running.page_count == 4
    assert running.media_type == "application/pdf" and running.started_at is not None
    assert store.start(job.id, page_count=4, pages=[2, 4], media_type="application/pdf")  # redelivered intake
    other, _ = make(store)
    store.cancel("acme", other.id)
    assert store.start(other.id, page_count=1, pages=[1], media_type=None) is False
    assert store.load(other.id).state == "canceled"
    with pytest.raises(NotFound):
        store.start(new_job_id(), page_count=1, pages=[1], media_type=None)


def test_page_finished_counts_down_and_ignores_redelivery(store):
    job = started(store, pages=(1, 2, 3))
    assert store.page_started(job.id, 1) == 1
    assert store.page_started(job.id, 1) == 2  # redelivered: the poison guard sees 2
    assert store.page_finished(job.id, page(1)) == 2
    assert store.page_finished(job.id, page(1)) == PAGE_DUPLICATE
    assert store.page_finished(job.id, page(1, "failed")) == PAGE_DUPLICATE  # first record wins
    assert store.page_finished(job.id, page(3, "failed")) == 1
    statuses = store.pages(job.id)
    assert [(s.page, s.state, s.attempts) for s in statuses] == [
        (1, "succeeded", 2),
        (2, "queued", 0),
        (3, "failed", 0),
    ]
    assert statuses[0].timings_ms == {"render": 1.5}
    store.page_started(job.id, 2)
    assert store.pages(job.id)[1].state == "running"
    assert store.page_finished(job.id, page(2)) == 0
    assert store.page_finished(job.id, page(2)) == PAGE_DUPLICATE
    loaded = store.load(job.id)
    assert (loaded.pages_done, loaded.pages_failed) == (2, 1)
    with pytest.raises(InvalidRequest):
        store.page_finished(job.id, page(9))  # not a selected page
    with pytest.raises(NotFound):
        store.page_finished(new_job_id(), page(1))


def test_concurrent_page_finishers_exactly_one_sees_zero(store):
    """40 pages, each delivered three times, all finishing at once from 24 threads."""
    n_pages = 40
    job = started(store, pages=range(1, n_pages + 1))
    deliveries = [p for p in range(1, n_pages + 1) for _ in range(3)]
    answers: list[tuple[int, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(24)

    def worker(chunk):
        barrier.wait()
        for p in chunk:
            remaining = store.page_finished(job.id, page(p, "failed" if p % 5 == 0 else "succeeded"))
            with lock:
                answers.append((p, remaining))

    threads = [threading.Thread(target=worker, args=(deliveries[i::24],)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 3 * n_pages
    assert [r for _, r in answers].count(0) == 1
    recorded = sorted(r for _, r in answers if r != PAGE_DUPLICATE)
    assert recorded == list(range(n_pages))  # every count from 39 down to 0 seen once
    loaded = store.load(job.id)
    assert (loaded.pages_done, loaded.pages_failed) == (32, 8)


def test_a_resent_script_call_gets_its_own_first_answer(store):
    """redis-py resends a command after a dropped connection; the same call (same token) must
    get its own answer again, not be taken for a duplicate and leave the job unfinalised."""
    job = started(store, pages=(1,))
    keys = [f"docproc:job:{job.id}", f"docproc:job:{job.id}:pages", ACTIVE_JOBS]
    args = [1, page(1).model_dump_json(), "succeeded", "token-a"]
    assert store._page_finished(keys=keys, args=args) == 0
    assert store._page_finished(keys=keys, args=args) == 0  # the resend
    assert store._page_finished(keys=keys, args=[*args[:3], "token-b"]) == PAGE_DUPLICATE  # a redelivery
    finish_keys = [keys[0], ENDED_OUTBOX, ACTIVE_JOBS]
    finish_args = ["succeeded", "finish-token", int(time.time() * 1000), job.id]
    assert store._finish(keys=finish_keys, args=finish_args) == 1
    assert store._finish(keys=finish_keys, args=finish_args) == 1  # the resend
    assert store.finish(job.id, "failed") is False


def test_finish_only_from_non_terminal(store):
    job = started(store)
    key = f"results/{job.id}/document.json"
    assert store.finish(job.id, "succeeded", result_key=key, model="m", schema_version="1")
    assert not store.finish(job.id, "failed", error=ErrorInfo(code="x", message="y"))
    done = store.load(job.id)
    assert done.state == "succeeded" and done.error is None and done.result_key.endswith("document.json")
    assert done.model == "m" and done.schema_version == "1" and done.finished_at >= done.created_at
    with pytest.raises(ValueError):
        store.finish(job.id, "running")


def test_cancel_wins_over_a_later_finish(store):
    job = started(store)
    canceled, did_cancel = store.cancel("acme", job.id)
    assert did_cancel is True
    assert canceled.state == "canceled" and canceled.finished_at is not None
    assert store.finish(job.id, "succeeded") is False
    assert store.load(job.id).state == "canceled"
    assert store.cancel("acme", job.id)[0].state == "canceled"  # canceling again: unchanged
    assert store.cancel("acme", job.id)[1] is False

    done = started(store)
    store.finish(done.id, "partial")
    assert store.cancel("acme", done.id)[0].state == "partial"  # terminal jobs stay as they are
    assert TERMINAL == {"succeeded", "partial", "failed", "canceled"}


def test_racing_finish_and_cancel_leave_one_outcome(store):
    for _ in range(20):
        job = started(store, pages=(1,))
        outcome = {}
        barrier = threading.Barrier(2)

        def finisher(job_id=job.id, outcome=outcome, barrier=barrier):
            barrier.wait()
            outcome["finished"] = store.finish(job_id, "succeeded")

        def canceler(job_id=job.id, outcome=outcome, barrier=barrier):
            barrier.wait()
            outcome["state"] = store.cancel("acme", job_id)[0].state

        threads = [threading.Thread(target=finisher), threading.Thread(target=canceler)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = store.load(job.id).state
        assert final == ("succeeded" if outcome["finished"] else "canceled")
        assert outcome["state"] == final


def test_a_bytes_client_works_the_same(redis_client, redis_server):
    """JobStore accepts a client without decode_responses too."""
    import redis

    settings = Settings(_env_file=None, redis_url=redis_server.url)
    store = JobStore(redis.Redis.from_url(redis_server.url), settings)
    job, _ = make(store, key="bytes", fp="f")
    assert make(store, key="bytes", fp="f")[0].id == job.id
    assert store.start(job.id, page_count=1, pages=[1], media_type=None)
    assert store.page_finished(job.id, page(1)) == 0
    assert store.pages(job.id)[0].state == "succeeded"
    assert [j.id for j in store.list("acme", cursor=None)[0]] == [job.id]


def test_task_ids_are_appended_atomically(store):
    job, _ = make(store)
    store.add_task_ids(job.id, ["t-1", "t-2"])
    store.add_task_ids(job.id, ["t-2", "t-3"])
    assert store.load(job.id).task_ids == ["t-1", "t-2", "t-3"]
    # the API and the intake add ids at the same time: none is lost
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.add_task_ids(job.id, [f"c-{i}"]), range(40)))
    ids = store.load(job.id).task_ids
    assert ids[:3] == ["t-1", "t-2", "t-3"] and sorted(ids[3:]) == sorted(f"c-{i}" for i in range(40))
    with pytest.raises(NotFound):
        store.add_task_ids(new_job_id(), ["t"])


def test_redis_down_is_service_unavailable(redis_server):
    """Stop the server: the store answers ServiceUnavailable; start it again: the AOF kept the job."""
    settings = Settings(_env_file=None, redis_url=redis_server.url)
    client = connect_redis(settings)
    store = JobStore(client, settings)
    job, _ = make(store, "durable")
    redis_server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable) as info:
            store.load(job.id)
        assert info.value.http_status == 503 and time.monotonic() - t0 < 15
    finally:
        redis_server.start()
    assert store.load(job.id).id == job.id


def test_every_terminal_transition_enters_the_ended_outbox_once(store):
    """finish/cancel put the job in the outbox in the same step; ended_handled takes it out."""
    finished, canceled, queued = started(store), started(store), started(store)
    assert store.finish(finished.id, "succeeded") is True
    assert store.cancel("acme", canceled.id)[1] is True
    assert store.finish(finished.id, "failed") is False  # no second transition, no second entry
    now_ms = int(time.time() * 1000) + 1
    pending = store.ended_pending(now_ms)
    assert finished.id in pending and canceled.id in pending and queued.id not in pending
    assert finished.id not in store.ended_pending(int(finished.created_at.timestamp() * 1000) - 1)
    store.ended_handled(finished.id)
    assert finished.id not in store.ended_pending(now_ms) and canceled.id in store.ended_pending(now_ms)


def test_first_start_takes_the_lease_and_the_first_attempt_in_one_step_and_nothing_after(store, redis_client):
    """A page's first delivery: the job comes back, the lease is taken (SET NX PX) and attempt 1
    counted. Anything else takes nothing: a page started before (the caller goes the long way),
    a lease someone else holds, a terminal job; a missing job is NotFound."""
    job = started(store, pages=(1, 2))
    lease = f"docproc:lease:{job.id}:1"
    loaded, code = store.first_start(job.id, 1, lease_key=lease, token="owner-a", ttl_ms=60_000)
    assert code == 1 and loaded.id == job.id and loaded.state == "running" and loaded.pages == [1, 2]
    assert redis_client.get(lease) == "owner-a" and 0 < redis_client.pttl(lease) <= 60_000
    assert store.pages(job.id)[0].attempts == 1
    redis_client.delete(lease)  # the owner released it; a redelivery goes the long way
    assert store.first_start(job.id, 1, lease_key=lease, token="owner-b", ttl_ms=60_000)[1] == 0
    assert redis_client.get(lease) is None and store.pages(job.id)[0].attempts == 1
    redis_client.set(f"docproc:lease:{job.id}:2", "someone")  # held, never started: LeaseHeld for the caller
    assert store.first_start(job.id, 2, lease_key=f"docproc:lease:{job.id}:2", token="c", ttl_ms=1000)[1] == -1
    assert store.pages(job.id)[1].attempts == 0
    assert store.finish(job.id, "canceled")
    redis_client.delete(f"docproc:lease:{job.id}:2")
    ended, code = store.first_start(job.id, 2, lease_key=f"docproc:lease:{job.id}:2", token="d", ttl_ms=1000)
    assert code == 0 and ended.state == "canceled" and store.pages(job.id)[1].attempts == 0
    assert redis_client.get(f"docproc:lease:{job.id}:2") is None
    with pytest.raises(NotFound):
        store.first_start("0" * 32, 1, lease_key="docproc:lease:x:1", token="e", ttl_ms=1000)


def test_the_record_releases_its_pages_lease_in_the_same_step(store, redis_client):
    """page_finished given the holder's lease deletes it with the record (and with a duplicate
    or a refused record too); a lease another owner took over is left to that owner. The
    Lease is no longer renewed and its release() sends nothing."""
    from docproc.jobs.leases import PageLeases

    job = started(store, pages=(1, 2))
    leases = PageLeases(redis_client, ttl_s=60)
    first = leases.acquire(job.id, 1)
    assert store.page_finished(job.id, page(1), lease=first) == 1
    assert redis_client.get(first.key) is None and first.released and first not in leases.held()
    redis_client.set(first.key, "someone-else")  # a later delivery's lease: release() must not touch it
    first.release()
    assert redis_client.get(first.key) == "someone-else"
    redis_client.delete(first.key)
    again = leases.acquire(job.id, 1)  # a redelivery recording the page again: a duplicate
    assert store.page_finished(job.id, page(1), lease=again) == PAGE_DUPLICATE
    assert redis_client.get(again.key) is None and again.released
    taken = leases.acquire(job.id, 2)
    redis_client.set(taken.key, "new-owner")  # expired and taken over meanwhile
    assert store.page_finished(job.id, page(2), lease=taken) == 0
    assert redis_client.get(taken.key) == "new-owner"
    stray = leases.acquire(job.id, 3)  # a page the job did not select: refused, lease released
    with pytest.raises(InvalidRequest):
        store.page_finished(job.id, page(3), lease=stray)
    assert redis_client.get(stray.key) is None


def test_the_last_record_and_the_finish_answer_with_the_job(store):
    """page_finished_loaded gives the job with the last page only (also to a resent call), and
    finish_loaded the job as it ended, or None when it was terminal already."""
    job = started(store, pages=(1, 2))
    assert store.page_finished_loaded(job.id, page(1)) == (1, None)
    remaining, loaded = store.page_finished_loaded(job.id, page(2, "failed"))
    assert remaining == 0 and (loaded.pages_done, loaded.pages_failed, loaded.state) == (1, 1, "running")
    assert store.page_finished_loaded(job.id, page(2))[0] == PAGE_DUPLICATE
    other = started(store, pages=(1,))
    keys = [f"docproc:job:{other.id}", f"docproc:job:{other.id}:pages", ACTIVE_JOBS]
    args = [1, page(1).model_dump_json(), "succeeded", "token-a"]
    first, resent = store._page_finished_loaded(keys=keys, args=args), store._page_finished_loaded(keys=keys, args=args)
    assert first[0] == resent[0] == 0 and "doc" in first and "doc" in resent  # the resend: the job again
    ended = store.finish_loaded(job.id, "partial", result_key="results/x/document.json")
    assert ended.state == "partial" and ended.result_key == "results/x/document.json" and ended.finished_at
    assert ended == store.load(job.id)
    assert store.finish_loaded(job.id, "failed") is None and store.load(job.id).state == "partial"
