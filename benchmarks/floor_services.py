"""Bare services for ``benchmarks/service_floor.py``: what the stack's libraries cost with no
docproc logic in them.

* ``celery_app``: a Celery app with docproc's broker configuration
  (:func:`docproc.base.broker.configure`: late acks, task events on, JSON; events off with
  ``FLOOR_NO_EVENTS=1``) and one task, ``docproc.intake``, that does nothing; run by
  ``celery -A floor_services.celery_app worker``.
* ``http_app``: a FastAPI app with a multipart upload (``POST /jobs``, 202 and a small JSON
  body) and a JSON read (``GET /jobs/{id}``), nothing behind them; run by uvicorn.
"""

from __future__ import annotations

import os
from typing import Annotated

from celery import Celery
from fastapi import FastAPI, File, Form, UploadFile

from docproc.base import broker
from docproc.base.settings import get_settings

celery_app = broker.configure(Celery("floor"), get_settings())
if os.environ.get("FLOOR_NO_EVENTS"):  # the same without task events (Flower's task view)
    celery_app.conf.update(worker_send_task_events=False, task_send_sent_event=False)


@celery_app.task(name=broker.INTAKE_TASK)
def noop(job_id: str) -> int:
    return 1


http_app = FastAPI()
VIEW = {"id": "0" * 32, "state": "running", "task": "ocr", "engine": "text", "pages_total": 1, "pages_done": 0,
        "created_at": "2026-12-06T08:00:00.000000+00:00", "started_at": None, "finished_at": None, "error": None}


@http_app.post("/jobs", status_code=202)
async def submit(file: Annotated[UploadFile, File()], task: Annotated[str, Form()]) -> dict:
    await file.read()
    return VIEW | {"task": task}


@http_app.get("/jobs/{job_id}")
async def get_job(job_id: str) -> dict:
    return VIEW | {"id": job_id}
