"""``docproc``: the command line.

    docproc process FILE... [--task ocr|tables|extract] [--schema NAME]
                            [--engine auto|text|internvl|openai] [--pages 1-3,7] [--out DIR]
    docproc schemas
    docproc tiny-model DIR
    docproc up | api | worker | flower       (the service; see docproc/cli/stack.py)
    docproc keys create --tenant T | revoke HASH | hash KEY
    docproc jobs ls|show|retry|cancel, docproc queues, docproc purge   (operator tools; docproc/cli/admin.py)
    docproc reprocess --tenant T --schema invoice@2 [--since DATE] [--dry-run] | reprocess diff ID

A bad input prints its typed error on one line (``file: code: message``) and
the command exits non-zero; tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from docproc.base.errors import DocprocError, InputError
from docproc.base.settings import get_settings
from docproc.cli import admin
from docproc.cli import reprocess as reprocess_cli

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OPERATOR_COMMANDS = ("jobs", "queues", "purge", "keys", "reprocess")
"""Commands that talk to the service's Redis and storage: they use a running ``docproc up``'s
settings when the environment names none, and say which they use (docproc/cli/stackfile.py)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docproc", description="Document ingestion: OCR, tables, JSON fields.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("process", help="process documents in-process (no Redis, no S3)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--task", choices=["ocr", "tables", "extract"], default="ocr")
    p.add_argument("--schema", help="extraction schema for --task extract (see `docproc schemas`)")
    p.add_argument("--engine", choices=["auto", "text", "internvl", "openai"], default="auto")
    p.add_argument("--pages", help='page range, e.g. "1-3,7" (default: all)')
    p.add_argument("--out", type=Path, default=Path("out"), help="directory for the JSON results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("schemas", help="list the extraction schemas")

    t = sub.add_parser(
        "tiny-model",
        help="write a tiny randomly initialised InternVL checkpoint (real architecture, noise output) "
        "for trying --engine internvl without real weights",
    )
    t.add_argument("directory", type=Path)
    t.add_argument("--seed", type=int, default=0)

    a = sub.add_parser("api", help="run the REST API (uvicorn)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8000)

    w = sub.add_parser("worker", help="run a worker (-Q gpu: the batching model worker; Celery prefork otherwise)")
    w.add_argument("--queues", "-Q", default="intake,render,bulk,periodic",
                   help="comma-separated queues (webhooks alone: the webhook deliverer, a threads pool)")
    w.add_argument("--concurrency", "-c", type=int, default=None)

    f = sub.add_parser("flower", help="run Flower (Celery monitoring) on the same broker, with basic auth")
    f.add_argument("--port", type=int, default=5555)
    f.add_argument("--basic-auth", default=None, help="user:password (default: $FLOWER_BASIC_AUTH)")

    u = sub.add_parser("up", help="start the whole service locally: redis, API, workers, Flower (Ctrl-C stops)")
    u.add_argument("--var", type=Path, default=Path("var"), help="where Redis data and local results go")
    u.add_argument("--port", type=int, default=8000, help="API port")
    u.add_argument("--redis-port", type=int, default=6390)
    u.add_argument("--flower-port", type=int, default=5555)
    u.add_argument("--no-model-worker", action="store_true", help="no gpu-queue worker (text engine only)")
    u.add_argument("--model-server", metavar="URL|vllm", default=None,
                   help="run the gpu queue on a model server: the URL of a running vLLM or LMDeploy server "
                        "(http://127.0.0.1:8000/v1), or 'vllm' to start one (DOCPROC_VLLM_PYTHON); sets "
                        "DOCPROC_MODEL_SERVER for the model worker")

    k = sub.add_parser("keys", help="API keys: create, revoke, hash")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key for a tenant (stored hashed in Redis; printed once)")
    kc.add_argument("--tenant", required=True)
    kr = ksub.add_parser("revoke", help="revoke a key by its hash (a prefix of 8+ hex digits)")
    kr.add_argument("hash_prefix")
    kh = ksub.add_parser("hash", help="print the sha256 of a key, for DOCPROC_API_KEYS")
    kh.add_argument("key")

    admin.add_parsers(sub)  # jobs ls|show|retry|cancel, queues, purge (docproc/cli/admin.py)
    reprocess_cli.add_parser(sub)  # reprocess [diff] (docproc/cli/reprocess.py)
    return parser


def _output_path(out: Path, source: Path, sha256: str, taken: set[Path]) -> Path:
    path = out / f"{source.stem}.json"
    if path in taken:
        path = out / f"{source.stem}-{sha256[:12]}.json"
    taken.add(path)
    return path


def cmd_process(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from docproc.jobs.requests import resolve_request
    from workers.pipeline import Engines, process_document

    settings = get_settings()
    # A bad task/schema/engine combination is refused before any file is read.
    resolve_request(args.task, args.schema, args.engine, settings)
    engines = Engines(settings, remember_load_failure=True)  # a model that cannot load is tried once
    args.out.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    exit_code = EXIT_OK
    model_reported = False
    for source in args.files:
        bar = None

        def on_start(n: int, name: str = source.name) -> None:
            nonlocal bar
            bar = tqdm(total=n, unit="page", desc=name, disable=args.no_progress, file=sys.stderr)

        try:
            data = source.read_bytes()
            result = process_document(
                data,
                filename=source.name,
                task=args.task,
                schema=args.schema,
                engine=args.engine,
                pages=args.pages,
                settings=settings,
                engines=engines,
                on_start=on_start,
                on_page=lambda _r: bar.update(1) if bar else None,
            )
        except OSError as exc:
            print(f"{source}: unreadable_file: {exc.strerror or exc}", file=sys.stderr)
            exit_code = EXIT_FAILED
            continue
        except InputError as exc:
            print(f"{source}: {exc}", file=sys.stderr)
            exit_code = EXIT_FAILED
            continue
        finally:
            if bar is not None:
                bar.close()
        if engines.load_error is not None and not model_reported:  # once: its pages say it too
            print(f"docproc: {str(engines.load_error).rstrip('.')}; its pages fail with model_unavailable, the "
                  "other pages and files go on", file=sys.stderr)
            model_reported = True
        path = _output_path(args.out, source, result.document.sha256, taken)
        path.write_text(result.model_dump_json(indent=2, by_alias=True) + "\n")
        failed = [p for p in result.pages if p.status == "failed"]
        summary = f"{source}: {result.status}, {len(result.pages)} page(s) via {result.engine} -> {path}"
        if failed:
            codes = sorted({p.error.code for p in failed if p.error})
            summary += f" ({len(failed)} page(s) failed: {', '.join(codes)})"
        print(summary)
        if result.status == "failed":
            exit_code = EXIT_FAILED
    return exit_code


def cmd_schemas(args: argparse.Namespace) -> int:
    from docproc.jobs.schemas import get_registry

    registry = get_registry(get_settings())
    for schema in registry:
        print(f"{schema.key:<28} {schema.title}: {schema.description}")
    return EXIT_OK


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from workers.engines.tiny_internvl import build_tiny_internvl

    path = build_tiny_internvl(args.directory, seed=args.seed)
    print(f"tiny InternVL written to {path}; try: DOCPROC_MODEL={path} docproc process FILE --engine internvl")
    return EXIT_OK


def cmd_api(args: argparse.Namespace) -> int:
    from api.app import serve

    serve(args.host, args.port)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker_cli import parse_queues, run_worker

    try:
        queues = parse_queues(args.queues)
    except ValueError as exc:
        print(f"docproc: invalid_request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run_worker(queues, concurrency=args.concurrency)
    return EXIT_OK


def cmd_flower(args: argparse.Namespace) -> int:
    import os

    from workers.celery_app import app
    from workers.flower_queues import keep_every_queue

    keep_every_queue()  # the gpu queue stays listed with no model worker online
    auth = args.basic_auth or os.environ.get("FLOWER_BASIC_AUTH")
    if not auth:
        print("docproc: configuration_error: Flower needs --basic-auth user:password "
              "(or FLOWER_BASIC_AUTH); it is never served open", file=sys.stderr)
        return EXIT_USAGE
    app.start(["flower", f"--port={args.port}", "--address=127.0.0.1", f"--basic-auth={auth}"])
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from docproc.cli.stack import Stack, run_stack

    stack = Stack(var=args.var, api_port=args.port, redis_port=args.redis_port,
                  flower_port=args.flower_port, model_worker=not args.no_model_worker)
    if args.model_server is not None:
        stack.env["DOCPROC_MODEL_SERVER"] = args.model_server
    return run_stack(stack)


def cmd_keys(args: argparse.Namespace) -> int:
    from docproc.base.auth import create_key, hash_key, revoke_key

    if args.keys_command == "hash":
        print(hash_key(args.key))
        return EXIT_OK
    from docproc.jobs.store import connect_redis

    redis = connect_redis(get_settings())
    if args.keys_command == "create":
        key, digest = create_key(redis, args.tenant)
        print(f"tenant {args.tenant}: key {key}  (hash {digest}; the key is shown only now)")
    else:
        print(f"revoked {revoke_key(redis, args.hash_prefix)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    using = None  # which Redis and storage an operator command used: its last line on stderr
    try:
        if args.command in OPERATOR_COMMANDS and getattr(args, "keys_command", None) != "hash":
            from docproc.cli import stackfile
            source = stackfile.apply()  # before the first get_settings()
            using = stackfile.describe(get_settings(), source)
        return {
            "process": cmd_process,
            "schemas": cmd_schemas,
            "tiny-model": cmd_tiny_model,
            "api": cmd_api,
            "worker": cmd_worker,
            "flower": cmd_flower,
            "up": cmd_up,
            "keys": cmd_keys,
            "jobs": admin.cmd_jobs,
            "queues": admin.cmd_queues,
            "purge": admin.cmd_purge,
            "reprocess": reprocess_cli.cmd_reprocess,
        }[args.command](args)
    except DocprocError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"docproc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("docproc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place an unexpected error is turned into a line
        if args.debug:
            traceback.print_exc()
        print(f"docproc: internal_error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if using:  # after the output, so an error stays the first line
            _publish_metrics()
            print(using, file=sys.stderr)


def _publish_metrics() -> None:
    """What an operator command counted (a retry's job, a cancel, a re-process) reaches the
    service-wide counters of the API's /metrics (docproc.base.shared_metrics)."""
    if "prometheus_client" not in sys.modules:  # nothing was counted
        return
    from docproc.base import shared_metrics
    from docproc.jobs.store import connect_redis

    client = connect_redis(get_settings())
    try:
        shared_metrics.publish(client)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
