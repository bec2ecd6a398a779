"""``docproc up``: the whole local stack from one command, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

import builders
from conftest import free_port

pytestmark = pytest.mark.worker


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "docproc up exited early"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout} s")


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    pairs = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    return {child for child, parent in pairs if parent == pid}


def test_up_serves_a_job_and_ctrl_c_stops_everything(tmp_path):
    api_port, redis_port, flower_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCPROC_")}
    log = open(tmp_path / "up.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "docproc", "up", "--var", str(tmp_path / "var"), "--port", str(api_port),
         "--redis-port", str(redis_port), "--flower-port", str(flower_port), "--no-model-worker"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
        # a terminal's Ctrl-C: SIGINT with the default handler (background shells ignore it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        base = f"http://127.0.0.1:{api_port}"
        _wait_ready(f"{base}/readyz", proc)
        log.seek(0)
        key = re.search(r"DOCPROC_KEY=(dp_\S+)", log.read()).group(1)
        children = _children(proc.pid)
        assert len(children) == 5  # redis, api, cpu worker, scheduler, flower

        headers = {"Authorization": f"Bearer {key}"}
        files = {"file": ("invoice.pdf", builders.invoice_pdf(), "application/pdf")}
        job = httpx.post(f"{base}/v1/jobs", headers=headers, files=files, data={"task": "tables"}).json()
        deadline = time.monotonic() + 60
        while (state := httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers).json()["state"]) in ("queued", "running"):
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.2)
        assert state == "succeeded"
        result = httpx.get(f"{base}/v1/jobs/{job['id']}/result", headers=headers).json()
        assert result["pages"][0]["tables"][0]["rows"][1:] == builders.INVOICE_ROWS
        # results on local disk under --var, AOF on for Redis
        assert list((tmp_path / "var" / "storage").rglob("document.json"))
        assert list((tmp_path / "var" / "redis").rglob("appendonly*"))

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_watch_restarts_a_dead_redis_and_stops_only_when_the_api_exits(tmp_path):
    """Redis SIGKILLed under `docproc up` comes back (from its AOF, on the same port) like the
    other children, instead of taking the whole stack down; the API exiting still ends it."""
    import shutil
    import threading

    import redis as redis_lib

    from docproc.stack import Child, Stack, wait_for_port

    port = free_port()
    (tmp_path / "redis").mkdir()
    redis_argv = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                  str(tmp_path / "redis"), "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    stack = Stack(var=tmp_path)
    stack.children = [Child("redis", redis_argv), Child("api", [sys.executable, "-c", "import time; time.sleep(120)"])]
    for child in stack.children:
        child.process = subprocess.Popen(child.argv, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=10)
        redis_lib.Redis(port=port).set("survives", "yes")
        returned: list[int] = []
        watcher = threading.Thread(target=lambda: returned.append(stack.watch()), daemon=True)
        watcher.start()
        first = stack.children[0].process
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while stack.children[0].process is first or stack.children[0].process.poll() is not None:
            assert time.monotonic() < deadline and watcher.is_alive() and not returned, "redis was not restarted"
            time.sleep(0.1)
        wait_for_port(port, timeout=10)
        assert redis_lib.Redis(port=port).get("survives") == b"yes"  # the same data, from the AOF
        os.kill(stack.children[1].process.pid, signal.SIGTERM)  # the API exits: the stack stops
        watcher.join(timeout=10)
        assert returned and returned[0] != 0
    finally:
        stack.stop(timeout=5)
