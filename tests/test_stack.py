"""``docproc up``: the whole local stack from one command, and Ctrl-C stops all of it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import builders
import httpx
import pytest
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


@dataclass
class Up:
    """A running ``docproc up`` (its process, log, ports and printed API key)."""

    proc: subprocess.Popen
    log: Any
    api_port: int
    redis_port: int
    flower_port: int
    key: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DOCPROC_")}


@contextmanager
def running_up(tmp_path: Path, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Iterator[Up]:
    """``docproc up --no-model-worker`` on free ports, ready (``/readyz`` answers); stopped
    with Ctrl-C at the end if the test did not stop it (killed if that fails)."""
    up = Up(None, open(tmp_path / "up.log", "w+"), free_port(), free_port(), free_port())
    up.proc = subprocess.Popen(
        [sys.executable, "-m", "docproc", "up", "--port", str(up.api_port), "--redis-port", str(up.redis_port),
         "--flower-port", str(up.flower_port), "--no-model-worker", *argv],
        stdout=up.log, stderr=subprocess.STDOUT, env={**_clean_env(), **(env or {})}, cwd=cwd,
        # a terminal's Ctrl-C: SIGINT with the default handler (background shells ignore it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_ready(f"{up.base}/readyz", up.proc)
        up.key = re.search(r"DOCPROC_KEY=(dp_\S+)", up.output()).group(1)
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            try:
                up.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.proc.kill()
        up.log.close()


def _finish(up: Up, job_id: str, timeout: float = 60, headers: dict[str, str] | None = None) -> str:
    deadline = time.monotonic() + timeout
    url = f"{up.base}/v1/jobs/{job_id}"
    while (state := httpx.get(url, headers=headers or up.headers).json()["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.2)
    return state


def _submit(up: Up, task: str = "tables", headers: dict[str, str] | None = None, **fields: str) -> dict:
    files = {"file": ("invoice.pdf", builders.invoice_pdf(), "application/pdf")}
    response = httpx.post(f"{up.base}/v1/jobs", headers=headers or up.headers, files=files,
                          data={"task": task, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def test_up_serves_a_job_and_ctrl_c_stops_everything(tmp_path):
    with running_up(tmp_path, "--var", str(tmp_path / "var")) as up:
        children = _children(up.proc.pid)
        assert len(children) == 6  # redis, api, cpu worker, webhook worker, scheduler, flower

        job = _submit(up)
        assert _finish(up, job["id"]) == "succeeded"
        result = httpx.get(f"{up.base}/v1/jobs/{job['id']}/result", headers=up.headers).json()
        assert result["pages"][0]["tables"][0]["rows"][1:] == builders.INVOICE_ROWS
        # results on local disk under --var, AOF on for Redis
        assert list((tmp_path / "var" / "storage").rglob("document.json"))
        assert list((tmp_path / "var" / "redis").rglob("appendonly*"))

        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=60) == 0
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_up_killed_takes_everything_it_started_with_it(tmp_path):
    """``docproc up`` SIGKILLed (no chance to stop its children): the kernel's parent-death
    signal stops Redis, the API, the workers, the scheduler and Flower anyway."""
    with running_up(tmp_path, "--var", str(tmp_path / "var")) as up:
        children = _children(up.proc.pid)
        assert len(children) == 6
        up.proc.kill()
        up.proc.wait(timeout=10)

        def alive() -> set[int]:  # still running (a zombie waiting for its reaper is not)
            left = set()
            for pid in children:
                try:
                    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if state not in ("Z", "X"):
                    left.add(pid)
            return left

        deadline = time.monotonic() + 60
        while alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert alive() == set()


def _docproc(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """The operator CLI in a second terminal of the same checkout: no DOCPROC_* set."""
    return subprocess.run([sys.executable, "-m", "docproc", *argv], cwd=cwd, env=_clean_env(),
                          capture_output=True, text=True, timeout=60)


def test_the_admin_cli_in_a_second_terminal_uses_the_redis_and_storage_of_up(tmp_path):
    """``docproc up`` (default --var, in the checkout) leaves its connection settings where
    ``docproc jobs/queues/keys`` find them; each prints which Redis and storage it uses."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    with running_up(tmp_path, cwd=checkout) as up:
        conn_file = checkout / "var" / "docproc-up.env"
        assert conn_file.is_file()
        job = _submit(up)
        assert _finish(up, job["id"]) == "succeeded"
        redis_line = f"Redis redis://127.0.0.1:{up.redis_port}/0 (from {conn_file.resolve()})"
        storage_line = f"storage {(checkout / 'var' / 'storage').resolve().as_uri()} (from {conn_file.resolve()})"

        ls = _docproc(checkout, "jobs", "ls", "--json")
        assert ls.returncode == 0, ls.stderr
        assert [row["id"] for row in json.loads(ls.stdout)] == [job["id"]]
        assert redis_line in ls.stderr and storage_line in ls.stderr

        queues = _docproc(checkout, "queues", "--json")
        assert queues.returncode == 0, queues.stderr
        assert {q["queue"] for q in json.loads(queues.stdout)} >= {"intake", "render", "gpu", "webhooks"}
        assert redis_line in queues.stderr

        retry = _docproc(checkout, "jobs", "retry", job["id"], "--force", "--json")
        assert retry.returncode == 0, retry.stderr  # the stored input is found under var/storage
        assert _finish(up, json.loads(retry.stdout)["new_job_id"]) == "succeeded"
        assert not (checkout / "var" / "docproc").exists()  # the default storage was never made

        created = _docproc(checkout, "keys", "create", "--tenant", "acme")
        assert created.returncode == 0, created.stderr
        assert redis_line in created.stderr
        acme = {"Authorization": "Bearer " + re.search(r"key (dp_\S+)", created.stdout).group(1)}
        assert _finish(up, _submit(up, headers=acme)["id"], headers=acme) == "succeeded"  # the API knows the key

        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=60) == 0
        assert not conn_file.exists()  # gone with the stack: the CLI falls back to its settings


def test_the_connection_file_yields_to_the_environment_and_is_ignored_once_up_is_gone(tmp_path, monkeypatch):
    from docproc.base.settings import get_settings
    from docproc.cli import stackfile

    monkeypatch.setenv(stackfile.PATH_ENV, str(stackfile.stack_file(tmp_path)))
    for name in stackfile.CONNECTION_SETTINGS:  # apply() sets them: restored at the end
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stackfile.write(tmp_path, {"DOCPROC_REDIS_URL": "redis://:secret@127.0.0.1:6390/0"}, pid=gone.pid)
    source = stackfile.apply()
    assert source.file is None and f"pid {gone.pid}) is not running" in source.note
    assert "DOCPROC_REDIS_URL" not in os.environ

    stackfile.write(tmp_path, {"DOCPROC_REDIS_URL": "redis://:secret@127.0.0.1:6390/0",
                               "DOCPROC_STORAGE_URL": "file:///srv/var/storage"}, pid=os.getpid())
    monkeypatch.setenv("DOCPROC_STORAGE_URL", "s3://chosen/prefix")  # set by the operator: it wins
    source = stackfile.apply()
    try:
        line = stackfile.describe(get_settings(), source)
        assert source.applied == {"DOCPROC_REDIS_URL"}
        assert line == (f"docproc: Redis redis://:***@127.0.0.1:6390/0 (from {source.file}), "
                        "storage s3://chosen/prefix (from the environment)")
    finally:
        get_settings.cache_clear()


def test_slow_webhook_receivers_do_not_delay_page_work(tmp_path):
    """Two jobs whose receivers take 12 s to answer (inside the attempt deadline) hold their
    deliveries; an unrelated one-page job submitted meanwhile still finishes at once: webhook
    delivery runs in a pool of its own."""
    from webhook_receiver import WebhookReceiver

    from docproc.delivery.webhooks import generate_secret

    env = {"DOCPROC_WEBHOOK_SECRETS": json.dumps({"local": [generate_secret()]}),
           "DOCPROC_WEBHOOK_ALLOW_HOSTS": json.dumps(["127.0.0.1/32"]), "DOCPROC_WEBHOOK_TIMEOUT_S": "30"}
    with WebhookReceiver(delay_s=12) as rx, running_up(tmp_path, "--var", str(tmp_path / "var"), env=env) as up:
        hooked = [_submit(up, webhook_url=rx.url) for _ in range(2)]
        assert [_finish(up, job["id"]) for job in hooked] == ["succeeded", "succeeded"]
        rx.wait_for(2, timeout=30)  # both deliveries are in flight now, for 12 s
        started = time.monotonic()
        plain = _submit(up)
        assert _finish(up, plain["id"], timeout=30) == "succeeded"
        took = time.monotonic() - started
        assert took < 6, f"a one-page job took {took:.1f} s behind two slow webhook receivers"
        assert time.time() - rx.requests[1].at < 12  # measured while the receivers still held them


def test_watch_restarts_a_dead_redis_and_stops_only_when_the_api_exits(tmp_path):
    """Redis SIGKILLed under `docproc up` comes back (from its AOF, on the same port) like the
    other children, instead of taking the whole stack down; the API exiting still ends it."""
    import shutil
    import threading

    import redis as redis_lib

    from docproc.cli.stack import Child, Stack, wait_for_port

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
