"""Dependencies of the routes, as ``Annotated`` aliases.

The service objects (Redis client, storage, job store, key ring, Celery app) are
made once by the app's lifespan and kept in ``app.state.services``; these aliases
hand them to a route. ``TenantDep`` authenticates the request and counts it
against the key's rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from docproc.base.auth import KeyRing, check_rate, hash_key
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


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


def get_redis(services: ServicesDep) -> redis.Redis:
    return services.redis


def get_storage(services: ServicesDep) -> Storage:
    return services.storage


def get_store(services: ServicesDep) -> JobStore:
    return services.store


def get_celery(services: ServicesDep) -> Celery:
    return services.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
StorageDep = Annotated[Storage, Depends(get_storage)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <API key>")


def get_tenant(
    request: Request,
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> str:
    """The tenant of the request's API key (Bearer or X-API-Key), after its rate limit.

    No key or an unknown key -> Unauthorized (401); over the limit -> RateLimited (429).
    """
    key = bearer.credentials if bearer is not None else api_key
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    tenant = services.keyring.authenticate(key)
    request.state.tenant = tenant  # for the access log line (api.middleware)
    check_rate(services.redis, hash_key(key), services.settings.rate_limit_per_minute)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
