"""``python -m api [--host H] [--port P]``: run the REST API (settings from DOCPROC_*)."""

from __future__ import annotations

import argparse

from api.app import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description="Run the docproc REST API.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args(argv)
    if args.workers > 1:
        import os
        import tempfile

        import uvicorn

        from docproc.base import logs
        from docproc.base.settings import get_settings

        # /metrics sums every worker process: prometheus_client's multiprocess mode (the
        # spawned workers import it after this is set)
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="docproc-api-metrics-"))
        settings = get_settings()
        uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_config=logs.dict_config(settings.log_format, settings.log_level), access_log=False)
    else:
        serve(args.host, args.port)


if __name__ == "__main__":
    main()
