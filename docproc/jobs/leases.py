"""Page leases: at most one live worker runs a given job page at a time.

Why: the Redis broker hands an unacked message out again once it is older than
the visibility timeout, even while the first worker still runs it (celery#5935),
and a killed worker's message comes back while nobody knows whether the worker
is dead. The job store's write-once results keep the *outcome* single, but the
work (minutes of GPU) would be done twice. A lease says "this page is being run
by a live owner":

* ``docproc:lease:{job}:{page}`` holds the owner's random token, with a TTL
  (``settings.lease_ttl_s``); ``SET NX PX`` takes it, so one owner wins (a page's
  first delivery takes it in the same Lua step that counts its first attempt,
  :meth:`docproc.jobs.store.JobStore.first_start`, and hands it to :meth:`PageLeases.adopt`);
* a heartbeat thread in the owner's process renews every lease the process holds
  every ``ttl / 3`` (compare-and-expire in Lua: only the owner's token renews);
* the owner releases it once the page is recorded (compare-and-delete), in the same Lua
  step that records the page (:meth:`docproc.jobs.store.JobStore.page_finished` given the
  lease) or, when the page is not recorded, with :meth:`Lease.release`;
* an owner that dies stops renewing, so its lease expires within one TTL and a
  later delivery of the page takes over.

A delivery that finds the lease held by another owner raises :class:`LeaseHeld`;
the caller keeps (or re-sends) its message for later instead of running the
page: the page is then either recorded by the owner (the later delivery finds
the stored result) or, if the owner died, taken over after the TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

import redis

logger = logging.getLogger(__name__)

LEASE_PREFIX = "docproc:lease:"

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms: extend the lease only if we still own it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease; ARGV[1] token: delete the lease only if we still own it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseHeld(Exception):
    """The page is being run by another live owner; this delivery must not run it."""

    def __init__(self, job_id: str, page: int, owner: str | None) -> None:
        super().__init__(f"page {job_id}/{page} is leased by {owner or 'another worker'}")
        self.job_id = job_id
        self.page = page
        self.owner = owner


def lease_key(job_id: str, page: int) -> str:
    return f"{LEASE_PREFIX}{job_id}:{int(page)}"


def new_owner_token() -> str:
    """host:pid:random: readable in Redis (who holds it) and unique per acquisition."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(eq=False)
class Lease:
    """One held page lease; released with the page's record, else :meth:`release`."""

    leases: "PageLeases"
    job_id: str
    page: int
    token: str
    lost: bool = field(default=False)
    released: bool = field(default=False)

    @property
    def key(self) -> str:
        return lease_key(self.job_id, self.page)

    def renew(self) -> bool:
        """Extend the TTL; False (and ``lost``) when another owner took it meanwhile."""
        ok = bool(self.leases._renew(keys=[self.key], args=[self.token, self.leases.ttl_ms]))
        if not ok and not self.lost:
            self.lost = True
            logger.warning("lease %s lost (expired or taken over); the stored result stays write-once",
                           self.key, extra={"job_id": self.job_id, "page": self.page})
        return ok

    def release(self) -> None:
        """Give the page up (idempotent); a lease already lost is left to its new owner."""
        if self.released:
            return
        self.released_elsewhere()
        try:
            self.leases._release(keys=[self.key], args=[self.token])
        except redis.exceptions.RedisError:  # it expires by itself within one TTL
            logger.warning("lease %s: release failed; it expires by itself", self.key,
                           extra={"job_id": self.job_id, "page": self.page})

    def released_elsewhere(self) -> None:
        """The lease was deleted by a Redis step that checked its token (the page's record):
        stop renewing it; :meth:`release` does nothing from now on."""
        self.released = True
        self.leases._forget(self)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PageLeases:
    """The leases of one process: acquire, and a heartbeat thread renewing the held ones."""

    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("lease ttl must be > 0")
        self.redis = client
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.heartbeat_s = ttl_s / 3.0
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._held: set[Lease] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, client: redis.Redis, settings) -> "PageLeases":
        return cls(client, settings.lease_ttl_s)

    def owner(self, job_id: str, page: int) -> str | None:
        """The token of whoever holds the page's lease (None: free)."""
        value = self.redis.get(lease_key(job_id, page))
        return value.decode() if isinstance(value, bytes) else value

    def acquire(self, job_id: str, page: int) -> Lease:
        """Take the page's lease (renewed by the heartbeat until released); LeaseHeld when
        a live owner has it."""
        token = new_owner_token()
        if not self.redis.set(lease_key(job_id, page), token, nx=True, px=self.ttl_ms):
            raise LeaseHeld(job_id, page, self.owner(job_id, page))
        return self.adopt(job_id, page, token)

    def adopt(self, job_id: str, page: int, token: str) -> Lease:
        """The lease ``token`` took in Redis by other means (``SET NX PX`` with this
        :attr:`ttl_ms`, inside a script), from now on renewed by the heartbeat like one of
        :meth:`acquire`."""
        lease = Lease(self, job_id, page, token)
        with self._lock:
            self._held.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="docproc-lease-heartbeat", daemon=True)
                self._thread.start()
        return lease

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held)

    def _forget(self, lease: Lease) -> None:
        with self._lock:
            self._held.discard(lease)

    def _beat(self) -> None:
        """Renew every held lease each ``ttl / 3``; stops when none is held."""
        while True:
            self._wake.wait(self.heartbeat_s)
            self._wake.clear()
            with self._lock:
                leases = list(self._held)
                if not leases:
                    self._thread = None
                    return
            for lease in leases:
                try:
                    if not lease.renew():
                        self._forget(lease)
                except redis.exceptions.RedisError as exc:  # Redis away: try again next beat
                    logger.warning("lease heartbeat: %s", exc)
                    break
