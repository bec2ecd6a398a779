"""Dependencies of the routes, as ``Annotated`` aliases.

The service objects (Redis client, storage, job store, key ring, Celery app) are
made once by the app's lifespan and kept in ``app.state.services``; these aliases
hand them to a route (``async def``: FastAPI runs a plain ``def`` dependency in its
thread pool, a hop per dependency per request, for an attribute read). ``TenantDep`` authenticates the request and counts it
against the key's rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from docproc.base.auth import KeyRing, check_rate
from docproc.base.errors import Unauthorized
from docproc.base.settings import Settings
from docproc.base.storage import Storage
from docproc.jobs import lifecycle
from docproc.jobs.store import JobStore


@dataclass
class Services:
    """What one API process holds for its whole life."""

    settings: Settings
    redis: redis.Redis
    storage: Storage
    store: JobStore
    keyring: KeyRing
    celery: Celery
    lifecycle: lifecycle.Context


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_redis(services: ServicesDep) -> redis.Redis:
    return services.redis


async def get_storage(services: ServicesDep) -> Storage:
    return services.storage


async def get_store(services: ServicesDep) -> JobStore:
    return services.store


async def get_celery(services: ServicesDep) -> Celery:
    return services.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
StorageDep = Annotated[Storage, Depends(get_storage)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <API key>")


async def get_tenant(
    request: Request,
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> str:
    """The tenant of the request's API key (Bearer or X-API-Key), after its rate limit.

    No key or an unknown key -> Unauthorized (401); over the limit -> RateLimited (429).
    A key from the settings is checked on the event loop (no I/O); a Redis key and the
    rate limit's count go to the thread pool (blocking Redis calls).
    """
    key = bearer.credentials if bearer is not None else api_key
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    digest = services.keyring.digest(key)
    tenant = services.keyring.static_tenant(digest)
    if tenant is None:
        tenant = await run_in_threadpool(services.keyring.stored_tenant, digest)
    request.state.tenant = tenant  # for the access log line (api.middleware)
    if services.settings.rate_limit_per_minute > 0:
        await run_in_threadpool(check_rate, services.redis, digest, services.settings.rate_limit_per_minute)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
