"""benchmarks/service.py, run as users run it: a small load through the whole stack, and
Ctrl-C in the middle of a run, after which none of the services it started may be left.

Starts real redis-server, API and Celery worker subprocesses: marked ``worker``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docproc.base.settings import REPO_ROOT

pytestmark = pytest.mark.worker

BENCHMARK = REPO_ROOT / "benchmarks" / "service.py"


def start_benchmark(*args: str, script: Path = BENCHMARK) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(script), *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def run_to_end(proc: subprocess.Popen, timeout: float = 240) -> str:
    """The benchmark's output once it exited (killed with its group past ``timeout``)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children...)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            for kid in kids:
                if kid not in found:
                    found.add(kid)
                    todo.append(kid)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_small_run_reports_every_job_succeeded_and_cleans_up() -> None:
    proc = start_benchmark("--jobs", "6", "--workers", "1", "--concurrency", "3", "--warmup", "1")
    out = run_to_end(proc)
    assert proc.returncode == 0, out
    assert "jobs: 6 submitted, 6 accepted, 6 succeeded; failed 0" in out, out
    assert "result checks: all 6 jobs listed succeeded" in out, out
    throughput = re.search(r"throughput: ([0-9.]+) jobs/s \(6 jobs in ([0-9.]+) s", out)
    assert throughput and float(throughput[1]) > 0, out
    for label in ("server (created_at -> finished_at)", "client (POST start -> seen done)"):
        line = next(l for l in out.splitlines() if label in l)
        p50, p99 = (float(re.search(rf"p{q} +([0-9.]+)", line)[1]) for q in (50, 99))
        assert 0 < p50 <= p99, line
    assert re.search(r"plumbing cost per page, workers: [0-9.]+ - [0-9.]+ = -?[0-9.]+ CPU ms", out), out
    var = Path(re.search(r"logs in (\S+?)\)", out)[1])
    assert not var.exists(), "the temp dir of a successful run is removed"


def test_ctrl_c_mid_run_stops_every_service_it_started() -> None:
    # Paced at 4 jobs/s, 60 jobs would take 15 s: the interrupt lands mid-run.
    proc = start_benchmark("--jobs", "60", "--rate", "4", "--workers", "1", "--warmup", "1")
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("stack up") for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        services = descendants(proc.pid)
        # redis-server, the API, the worker and its prefork child
        assert len(services) >= 4, (services, "".join(lines))
        time.sleep(3)  # into the warm-up / the measured run
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(lines) + out
    assert proc.returncode == 130, out
    assert "interrupted" in out and "stopping the stack" in out, out
    assert not [pid for pid in services if alive(pid)], out
    var = Path(re.search(r"service logs kept in (\S+)", out)[1])
    assert (var / "worker.log").exists()  # kept for a look after a failed or interrupted run
    shutil.rmtree(var)


def test_the_floor_benchmark_measures_each_library_and_leaves_nothing_running() -> None:
    """benchmarks/service_floor.py on a small count: every part measured (positive CPU per
    call, task and request), their sum printed, and no redis-server, worker or uvicorn left."""
    def started_here() -> set[int]:  # its worker and uvicorn by their app, redis-servers by name
        found = set()
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ") if entry.name.isdigit() else b""
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            if b"floor_services" in cmdline or cmdline.split(b" ")[0].endswith(b"redis-server"):
                found.add(int(entry.name))
        return {pid for pid in found if alive(pid)}

    before = started_here()
    proc = start_benchmark("--calls", "30", "--tasks", "100", "--requests", "60",
                           script=REPO_ROOT / "benchmarks" / "service_floor.py")
    out = run_to_end(proc)
    assert proc.returncode == 0, out
    put, get = (float(x) for x in re.search(r"PUT ([0-9.]+), GET ([0-9.]+) client CPU ms per call", out).groups())
    tasks = [float(x) for x in re.findall(r"= ([0-9.]+) CPU ms per task", out)]
    upload, read = (float(x) for x in re.search(r"8 KiB ([0-9.]+), JSON read ([0-9.]+) server", out).groups())
    assert min(put, get, upload, read, *tasks) > 0 and len(tasks) == 2, out
    floor = float(re.search(r"= ([0-9.]+) CPU ms \(", out)[1])
    assert abs(floor - (3 * put + get + tasks[0] + upload + read)) < 0.2, out  # the sum of what it printed
    assert not started_here() - before, out
