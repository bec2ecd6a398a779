"""``/healthz`` (the process answers) and ``/readyz`` (its Redis and storage answer)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import RedisDep, StorageDep
from api.models import Health
from api.problems import problem_response, problem_responses

router = APIRouter(tags=["health"])
log = logging.getLogger("docproc.api")


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: Redis answers PING and storage is reachable",
    responses=problem_responses(503),
)
def readyz(redis: RedisDep, storage: StorageDep) -> Health | JSONResponse:
    checks: dict[str, str] = {}
    try:
        redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means "not ready"; the reason goes to the log
        log.warning("readyz: redis: %s: %s", type(exc).__name__, exc)
        checks["redis"] = f"unreachable ({type(exc).__name__})"
    try:
        storage.ping()
        checks["storage"] = "ok"
    except Exception as exc:
        log.warning("readyz: storage: %s: %s", type(exc).__name__, exc)
        checks["storage"] = f"unreachable ({type(exc).__name__})"
    if all(v == "ok" for v in checks.values()):
        return Health(status="ok", checks=checks)
    failing = ", ".join(name for name, v in checks.items() if v != "ok")
    return problem_response(
        503, "service_unavailable", f"not ready: {failing} unreachable", extra={"checks": checks},
        headers={"Retry-After": "5"},
    )
