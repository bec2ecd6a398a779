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
        import uvicorn

        uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers)
    else:
        serve(args.host, args.port)


if __name__ == "__main__":
    main()
