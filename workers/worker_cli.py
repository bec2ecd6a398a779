"""Start a docproc worker with the process model its queues need.

``python -m workers --queues intake,render,bulk,periodic`` (or ``docproc worker``)
runs in this process:

* ``--queues gpu`` alone: the model worker (:mod:`workers.model_worker`), one process
  that loads the model once, owns the GPU (CUDA cannot be re-initialised in a forked
  child) and batches pages of many jobs per generate call; run one per GPU, with
  ``CUDA_VISIBLE_DEVICES`` choosing it;
* ``gpu`` mixed with other queues: a Celery solo worker (one page at a time);
* ``--queues webhooks`` alone: the webhook deliverer, a Celery worker with the threads
  pool (``settings.webhook_concurrency`` threads): deliveries wait on receivers, not on
  the CPU, and each attempt has its own total deadline (``webhook_timeout_s``), so slow
  receivers take threads of this pool, never the page workers' processes;
* CPU-only queues: ``celery -A workers.celery_app worker`` with the prefork pool
  (``--concurrency`` children, default the CPU count), where Celery's soft/hard time
  limits apply.

The default queues (:data:`CPU_QUEUES`) are the page work and the housekeeping ticks;
webhook delivery runs in a worker of its own (``docproc up``, docker/compose.yaml and
infra/ start one).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from docproc.base.broker import GPU_QUEUE, QUEUES, WEBHOOKS_QUEUE

CPU_QUEUES = ("intake", "render", "bulk", "periodic")
"""What ``docproc worker`` consumes by default: page work and the housekeeping ticks."""


def parse_queues(spec: str) -> list[str]:
    """``"intake,render"`` -> ``["intake", "render"]``; ValueError for an unknown or no queue."""
    queues = [q.strip() for q in spec.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        raise ValueError(f"unknown queue(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(QUEUES)}")
    return list(dict.fromkeys(queues))


def pool_for(queues: Sequence[str]) -> str:
    """``solo`` when the worker consumes the gpu queue, ``threads`` for webhooks alone, else ``prefork``."""
    if GPU_QUEUE in queues:
        return "solo"
    return "threads" if list(queues) == [WEBHOOKS_QUEUE] else "prefork"


def worker_argv(
    queues: Sequence[str], *, concurrency: int | None = None, hostname: str | None = None, loglevel: str = "INFO"
) -> list[str]:
    """The ``celery worker`` arguments for ``queues``."""
    pool = pool_for(queues)
    argv = ["worker", "-Q", ",".join(queues), "-P", pool, "--loglevel", loglevel]
    if pool == "solo":
        argv += ["-c", "1"]
    elif pool == "threads":
        from docproc.base.settings import get_settings

        argv += ["-c", str(concurrency or get_settings().webhook_concurrency)]
    elif concurrency:
        argv += ["-c", str(concurrency)]
    argv += ["-n", hostname or {"solo": "gpu@%h", "threads": "webhooks@%h"}.get(pool, "cpu@%h")]
    return argv


def run_worker(queues: Sequence[str], **options) -> None:
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown).

    The ``gpu`` queue alone gets the batched model worker (:mod:`workers.model_worker`:
    pages of many jobs per generate call); mixed with other queues it is a Celery solo
    worker (one page at a time)."""
    from workers.observability import prepare_worker_metrics

    prepare_worker_metrics()  # multiprocess metrics: before the tasks import prometheus_client
    if list(queues) == [GPU_QUEUE]:
        import logging

        from celery import signals

        from workers import model_worker

        level = str(options.get("loglevel") or "INFO").upper()
        logging.basicConfig(level=level, format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
        signals.after_setup_logger.send(sender=None, logger=logging.getLogger(), loglevel=level, logfile=None,
                                        format="", colorize=False)  # the worker's log style, as Celery's
        code = model_worker.run(hostname=options.get("hostname"))
        if code:
            raise SystemExit(code)
        return
    from workers.celery_app import app

    app.worker_main(worker_argv(queues, **options))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", "-Q", default=",".join(CPU_QUEUES),
                        help=f"comma-separated, from {', '.join(QUEUES)} (default: %(default)s)")
    parser.add_argument("--concurrency", "-c", type=int, default=None,
                        help="prefork children (default: the CPU count; solo pools run one task at a time)")
    parser.add_argument("--hostname", "-n", default=None, help="node name (default: gpu@%%h or cpu@%%h)")
    parser.add_argument("--loglevel", "-l", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        queues = parse_queues(args.queues)
    except ValueError as exc:
        parser.error(str(exc))
    run_worker(queues, concurrency=args.concurrency, hostname=args.hostname, loglevel=args.loglevel)
    return 0
