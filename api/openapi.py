"""Request bodies the routes read themselves, described in the OpenAPI document.

The submit routes read their bodies by hand (streamed, size- and time-limited, strict
JSON: :mod:`api.uploads`), so FastAPI cannot derive them from a parameter. A route
names its body with :func:`json_body` (and a multipart schema where it takes one); the
models named so are added to ``components.schemas`` by :func:`install`, nested models
(``$defs``) included, so every ``$ref`` resolves and generated clients get typed bodies.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.problems import Problem

REF = "#/components/schemas/{model}"
_BODY_MODELS: dict[str, type[BaseModel]] = {"Problem": Problem}  # every problem+json response refers to it


def json_body(model: type[BaseModel], multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``openapi_extra`` with a required request body: JSON as ``model`` (and, given, a
    ``multipart/form-data`` schema)."""
    _BODY_MODELS[model.__name__] = model
    content: dict[str, Any] = {}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    content["application/json"] = {"schema": {"$ref": REF.format(model=model.__name__)}}
    return {"requestBody": {"required": True, "content": content}}


def _body_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for name, model in _BODY_MODELS.items():
        schema = model.model_json_schema(by_alias=True, ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return schemas


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the models of :func:`json_body` bodies."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                   description=app.description, routes=app.routes, tags=app.openapi_tags,
                                   servers=app.servers)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in _body_schemas().items():
                components.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
