"""``/healthz`` (the process answers) and ``/readyz`` (its Redis and storage answer)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import RedisDep, StorageDep
from api.models import Health, ModelWorker, Readiness
from api.problems import problem_response, problem_responses
from docproc.base import model_workers

router = APIRouter(tags=["health"])
log = logging.getLogger("docproc.api")


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: Redis answers PING and storage is reachable; the model workers online",
    responses=problem_responses(503),
)
def readyz(redis: RedisDep, storage: StorageDep) -> Readiness | JSONResponse:
    checks: dict[str, str] = {}
    workers: list[dict[str, Any]] | None = None
    try:
        redis.ping()
        checks["redis"] = "ok"
        workers = model_workers.online(redis)
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
        # informational: the API is ready without them, but refuses model work (engine_unavailable)
        return Readiness(status="ok", checks=checks, model_workers=[ModelWorker(**w) for w in workers or []])
    failing = ", ".join(name for name, v in checks.items() if v != "ok")
    return problem_response(
        503, "service_unavailable", f"not ready: {failing} unreachable", extra={"checks": checks},
        headers={"Retry-After": "5"},
    )

