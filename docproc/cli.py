"""``docproc``: the command line.

    docproc process FILE... [--task ocr|tables|extract] [--schema NAME]
                            [--engine auto|text|internvl] [--pages 1-3,7] [--out DIR]
    docproc schemas
    docproc tiny-model DIR

A bad input prints its typed error on one line (``file: code: message``) and
the command exits non-zero; tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from docproc.errors import DocprocError, InputError
from docproc.settings import get_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docproc", description="Document ingestion: OCR, tables, JSON fields.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("process", help="process documents in-process (no Redis, no S3)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--task", choices=["ocr", "tables", "extract"], default="ocr")
    p.add_argument("--schema", help="extraction schema for --task extract (see `docproc schemas`)")
    p.add_argument("--engine", choices=["auto", "text", "internvl"], default="auto")
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
    return parser


def _output_path(out: Path, source: Path, sha256: str, taken: set[Path]) -> Path:
    path = out / f"{source.stem}.json"
    if path in taken:
        path = out / f"{source.stem}-{sha256[:12]}.json"
    taken.add(path)
    return path


def cmd_process(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workers.pipeline import Engines, process_document, resolve_request

    settings = get_settings()
    # A bad task/schema/engine combination is refused before any file is read.
    resolve_request(args.task, args.schema, args.engine, settings)
    engines = Engines(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    exit_code = EXIT_OK
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
    from docproc.schemas import get_registry

    registry = get_registry(get_settings())
    for schema in registry:
        print(f"{schema.key:<28} {schema.title}: {schema.description}")
    return EXIT_OK


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from workers.engines.tiny_internvl import build_tiny_internvl

    path = build_tiny_internvl(args.directory, seed=args.seed)
    print(f"tiny InternVL written to {path}; try: DOCPROC_MODEL={path} docproc process FILE --engine internvl")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"process": cmd_process, "schemas": cmd_schemas, "tiny-model": cmd_tiny_model}[args.command](args)
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


if __name__ == "__main__":
    sys.exit(main())
