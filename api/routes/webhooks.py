"""Webhook deliveries: the attempt log of a job's events, dead letters, redelivery, endpoints.

Thin routes over :mod:`docproc.delivery.webhooks`. Every route is scoped to the caller's tenant:
another tenant's job or event id answers 404 exactly like a missing one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import RedisDep, ServicesDep, StoreDep, TenantDep
from api.openapi import json_body
from api.problems import problem_responses
from api.uploads import invalid_body, read_json
from docproc.delivery import webhooks
from docproc.delivery.webhooks import EventStatus

router = APIRouter(tags=["webhooks"])

COMMON_ERRORS = (401, 422, 429)
EventId = Annotated[str, Path(description="A webhook event id (the `webhook-id` header).", max_length=160)]


class DeliveryList(BaseModel):
    """A job's webhook events, oldest first, each with every delivery attempt."""

    job_id: str
    events: list[EventStatus]


class DeadLetterList(BaseModel):
    """Events given up on (retries exhausted, endpoint gone or disabled), newest first."""

    events: list[EventStatus]
    total: int
    next_offset: int | None = Field(description="Pass as `offset` for the next page; null at the end.")


class EndpointRequest(BaseModel):
    """An endpoint to re-enable after it answered 410 Gone."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="The webhook URL exactly as submitted with the jobs.")


class EndpointState(BaseModel):
    url: str
    was_disabled: bool


class DisabledEndpoint(BaseModel):
    url: str
    at: str = Field(description="When it answered 410 (ISO 8601).")
    event_id: str = Field(description="The event whose delivery got the 410.")


@router.get(
    "/v1/jobs/{job_id}/deliveries",
    response_model=DeliveryList,
    summary="A job's webhook deliveries",
    description="Every webhook event of the job with every attempt: time, status code, latency, "
    "the start of the response, error, and the next attempt's time while retries go on.",
    responses=problem_responses(*COMMON_ERRORS, 404),
)
def job_deliveries(
    job_id: Annotated[str, Path(max_length=64)], tenant: TenantDep, store: StoreDep, redis: RedisDep
) -> DeliveryList:
    store.get(tenant, job_id)  # 404 for another tenant's job
    return DeliveryList(job_id=job_id, events=webhooks.events_for_subject(redis, tenant, job_id))


@router.get(
    "/v1/webhooks/dead-letters",
    response_model=DeadLetterList,
    summary="Dead-lettered webhook events",
    description="Events whose last attempt failed, whose endpoint answered 410 Gone, or that were not "
    "sent because their endpoint is disabled. `POST /v1/webhooks/{event_id}/redeliver` sends one again.",
    responses=problem_responses(*COMMON_ERRORS),
)
def dead_letters(
    tenant: TenantDep,
    redis: RedisDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DeadLetterList:
    events, total = webhooks.dead_letters(redis, tenant, limit=limit, offset=offset)
    more = offset + limit < total
    return DeadLetterList(events=events, total=total, next_offset=offset + limit if more else None)


@router.get(
    "/v1/webhooks/endpoints/disabled",
    response_model=list[DisabledEndpoint],
    summary="Endpoints disabled by a 410 answer",
    responses=problem_responses(*COMMON_ERRORS),
)
def disabled_endpoints(tenant: TenantDep, redis: RedisDep) -> list[DisabledEndpoint]:
    return [DisabledEndpoint.model_validate(e) for e in webhooks.disabled_endpoints(redis, tenant)]


@router.post(
    "/v1/webhooks/endpoints/enable",
    response_model=EndpointState,
    summary="Re-enable an endpoint disabled by a 410 answer",
    description="Later events to the URL are sent again; earlier dead-lettered ones can be redelivered.",
    openapi_extra=json_body(EndpointRequest),
    responses=problem_responses(*COMMON_ERRORS, 408, 415),
)
async def enable_endpoint(request: Request, tenant: TenantDep, services: ServicesDep) -> EndpointState:
    # read here, not as a body parameter: the strict JSON rules and the body deadline (api.uploads)
    raw = await read_json(request, timeout_s=services.settings.request_body_timeout_s)
    try:
        body = EndpointRequest.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    disabled = await run_in_threadpool(webhooks.enable_endpoint, services.redis, tenant, body.url)
    return EndpointState(url=body.url, was_disabled=disabled)


@router.get(
    "/v1/webhooks/{event_id}",
    response_model=EventStatus,
    summary="A webhook event and its attempts",
    responses=problem_responses(*COMMON_ERRORS, 404),
)
def get_event(event_id: EventId, tenant: TenantDep, redis: RedisDep) -> EventStatus:
    return webhooks.event_status(redis, tenant, event_id)


@router.post(
    "/v1/webhooks/{event_id}/redeliver",
    response_model=EventStatus,
    status_code=202,
    summary="Send a webhook event again",
    description="A succeeded or dead-lettered event is sent again (same `webhook-id`, fresh retry "
    "schedule); a pending one is left as it is. 409 `webhook_endpoint_disabled` while its endpoint "
    "is disabled.",
    responses=problem_responses(*COMMON_ERRORS, 404, 409),
)
def redeliver(event_id: EventId, tenant: TenantDep, services: ServicesDep, response: Response) -> EventStatus:
    status = webhooks.redeliver(services.lifecycle, tenant, event_id)
    response.headers["Location"] = f"/v1/webhooks/{event_id}"
    return status
