"""``python -m workers``: start a docproc Celery worker (see workers.worker_cli)."""

from workers.worker_cli import main

raise SystemExit(main())
