"""Where ``docproc up`` leaves its connection settings, and how the operator CLI finds them.

``docproc up`` runs Redis on its own port (6390) and keeps results under ``var/storage``;
an operator command in a second terminal of the same checkout (``docproc jobs ls``,
``docproc queues``, ``docproc keys create`` ...) must talk to *that* Redis and storage,
not to the defaults (``redis://127.0.0.1:6379/0``, ``file://./var/docproc``). So ``up``
writes them to ``<var>/docproc-up.env`` (a dotenv file, with the pid of ``up``) while it
runs and removes the file when it stops, and the operator commands read it:

* a ``DOCPROC_*`` variable set in the environment always wins (an explicit choice);
* otherwise the file's values are used when it is there and its ``up`` still runs;
  ``DOCPROC_UP_ENV`` names the file, else ``./var/docproc-up.env``, else the
  checkout's ``var/docproc-up.env``;
* a file whose ``up`` is gone (killed without cleaning up) is ignored, with a note.

:func:`describe` is the line every operator command prints to stderr: which Redis and
which storage it uses, and where that came from (passwords masked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from docproc.base.settings import REPO_ROOT, Settings

FILE_NAME = "docproc-up.env"
PATH_ENV = "DOCPROC_UP_ENV"
PID_KEY = "DOCPROC_UP_PID"  # not a setting: Settings ignores unknown DOCPROC_ names
CONNECTION_SETTINGS = ("DOCPROC_REDIS_URL", "DOCPROC_STORAGE_URL", "DOCPROC_S3_ENDPOINT_URL", "DOCPROC_S3_REGION")
"""What ``up`` writes: how to reach its Redis and its storage."""


def stack_file(var: Path) -> Path:
    """The connection file of a ``docproc up`` whose data directory is ``var``."""
    return Path(var) / FILE_NAME


def write(var: Path, env: dict[str, str], pid: int | None = None) -> Path:
    """Write the connection settings ``up`` gave its children (``env``) for the CLI."""
    path = stack_file(var)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# written by `docproc up` (pid {pid or os.getpid()}); removed when it stops",
             f"{PID_KEY}={pid or os.getpid()}"]
    lines += [f"{name}={_quote(env[name])}" for name in CONNECTION_SETTINGS if env.get(name)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def remove(var: Path) -> None:
    stack_file(var).unlink(missing_ok=True)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "") + "'"


def read(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of a connection file (comments skipped, quotes taken off)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("'\"")
    return values


def _candidates() -> list[Path]:
    named = os.environ.get(PATH_ENV)
    if named:
        return [Path(named)]
    return list(dict.fromkeys([stack_file(Path("var")).resolve(), stack_file(REPO_ROOT / "var")]))


def _running(pid: str | None) -> bool:
    try:
        os.kill(int(pid or ""), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Source:
    """Where the operator command's connection settings came from."""

    file: Path | None = None  # the ``up`` connection file applied, if any
    applied: frozenset[str] = frozenset()  # the DOCPROC_* names taken from it
    note: str = ""  # e.g. a stale file that was ignored


def apply() -> Source:
    """Put a running ``docproc up``'s connection settings into this process's environment
    (each only where the environment has none), so every ``get_settings()`` sees them.
    Call before the first ``get_settings()``; returns what was applied."""
    from docproc.base.settings import get_settings

    for path in _candidates():
        if not path.is_file():
            continue
        values = read(path)
        if not _running(values.get(PID_KEY)):
            return Source(note=f"ignored {path}: its docproc up (pid {values.get(PID_KEY)}) is not running")
        applied = frozenset(n for n in CONNECTION_SETTINGS if n in values and n not in os.environ)
        for name in applied:
            os.environ[name] = values[name]
        get_settings.cache_clear()
        return Source(file=path, applied=applied)
    return Source()


def mask(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=user_host[0].split(":", 1)[0] + ":***@" + user_host[1]))


def describe(settings: Settings, source: Source) -> str:
    """The line an operator command prints: which Redis and storage, and from where."""
    def origin(name: str) -> str:
        if name in source.applied:
            return f"from {source.file}"
        return "from the environment" if name in os.environ else "default or .env"

    storage = settings.storage_url + (f" at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else "")
    line = (f"docproc: Redis {mask(settings.redis_url)} ({origin('DOCPROC_REDIS_URL')}), "
            f"storage {mask(storage)} ({origin('DOCPROC_STORAGE_URL')})")
    return line + (f"; {source.note}" if source.note else "")
