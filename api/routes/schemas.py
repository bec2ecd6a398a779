"""``/v1/schemas``: the extraction schemas a job's ``schema`` field may name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import SettingsDep, TenantDep
from api.models import SchemaList, SchemaView, schema_summary, schema_view
from api.problems import problem_responses
from docproc.base.errors import NotFound, UnknownSchema
from docproc.jobs.schemas import get_registry

router = APIRouter(prefix="/v1/schemas", tags=["schemas"])


@router.get(
    "",
    response_model=SchemaList,
    summary="List extraction schemas",
    description="The latest version of every document type.",
    responses=problem_responses(401, 422, 429),
)
def list_schemas(tenant: TenantDep, settings: SettingsDep) -> SchemaList:
    return SchemaList(schemas=[schema_summary(s) for s in get_registry(settings).latest()])


@router.get(
    "/{name}",
    response_model=SchemaView,
    summary="One extraction schema",
    description='`invoice` is the latest version; `invoice@1` exactly version 1.',
    responses=problem_responses(401, 404, 422, 429),
)
def get_schema(
    name: Annotated[str, Path(max_length=100, description="name or name@version")],
    tenant: TenantDep,
    settings: SettingsDep,
) -> SchemaView:
    try:
        return schema_view(get_registry(settings).get(name))
    except UnknownSchema as exc:  # a lookup by URL: the resource does not exist
        raise NotFound(exc.message, **exc.details) from None
