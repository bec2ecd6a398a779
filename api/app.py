"""The docproc REST API: ``create_app(settings)`` builds it, ``serve(...)`` runs it.

Start it with ``python -m api --host 127.0.0.1 --port 8000`` (or ``docproc api``), or
``uvicorn --factory api.app:create_app``. Settings come from ``DOCPROC_*`` variables.

The app never imports torch: the workers' intake checks it runs on uploads
(``docproc.jobs.inputs``, ``workers.render``) use PyMuPDF and Pillow only, and tasks go
to Celery by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import openapi
from api.deps import Services
from api.middleware import RequestObservability
from api.problems import install_problem_handlers
from api.routes import batches, health, jobs, schemas
from api.routes import metrics as metrics_route
from api.routes import webhooks as webhooks_route
from docproc.base import broker, logs, shared_metrics, tracing
from docproc.base.auth import KeyRing
from docproc.base.settings import Settings, get_settings
from docproc.base.storage import open_storage
from docproc.housekeeping import after_end
from docproc.jobs.schemas import get_registry
from docproc.jobs.store import JobStore, connect_redis

DESCRIPTION = """\
Submit PDFs and scans; get OCR text, tables or schema-valid JSON back.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. Every error is
`application/problem+json` (RFC 9457) with a machine-readable `code`: match on it.
"""


def open_services(settings: Settings) -> Services:
    """Everything the routes use, made once: Redis, storage, job store, keys, Celery."""
    get_registry(settings)  # a bad schema file stops the start-up, not the first request
    client = connect_redis(settings)
    store = JobStore(client, settings)
    celery = broker.client(settings)

    def send(name: str, args: list, queue: str) -> None:
        celery.send_task(name, args=args, queue=queue)

    storage = open_storage(settings)
    return Services(
        settings=settings,
        redis=client,
        storage=storage,
        store=store,
        keyring=KeyRing(settings, client),
        celery=celery,
        lifecycle=after_end.context(settings=settings, redis=client, store=store, send=send, storage=storage),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment); services open at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = open_services(settings or get_settings())
        tracing.configure(services.settings)  # spans per stage when otel_enabled
        shared_metrics.start(services.redis)  # this process's counts reach the service-wide /metrics
        app.state.services = services
        try:
            yield
        finally:
            services.redis.close()
            services.celery.close()

    # /docs (Swagger UI) and /redoc with their JS/CSS served by the API itself (fastapi-offline
    # ships them): air-gapped sites get working docs, no CDN is ever asked.
    app = FastAPIOffline(
        title="docproc",
        version="0.1.0",
        summary="Asynchronous document processing: OCR, tables and field extraction with InternVL.",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationId = the route's function: submit, get_job
    )
    install_problem_handlers(app)
    openapi.install(app)
    app.add_middleware(RequestObservability)  # request id, HTTP metrics, access log
    app.include_router(jobs.router)
    app.include_router(schemas.router)
    app.include_router(health.router)
    app.include_router(batches.router)
    app.include_router(metrics_route.router)
    app.include_router(webhooks_route.router)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None, **uvicorn_options) -> None:
    """Run the API with uvicorn until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    settings = settings or get_settings()
    uvicorn_options.setdefault("log_config", logs.dict_config(settings.log_format, settings.log_level))
    uvicorn_options.setdefault("access_log", False)  # api.middleware logs each request (with its request id)
    uvicorn.run(create_app(settings), host=host, port=port, **uvicorn_options)
