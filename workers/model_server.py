"""The model server a model worker feeds: a sidecar's URL, or a vLLM it starts and supervises.

``DOCPROC_MODEL_SERVER`` picks it (:func:`server_for`):

* a URL (``http://127.0.0.1:8000/v1``): a server beside the worker (the GPU pod's vLLM
  or LMDeploy container, :mod:`infra`); the worker only waits for it to answer;
* ``vllm``: the worker starts ``python -m vllm.entrypoints.openai.api_server`` itself
  on its GPU with ``DOCPROC_VLLM_PYTHON`` (an environment of its own: vLLM pins its own
  torch), as olmOCR's pipeline does. :class:`VLLMProcess` waits for its health check,
  copies every line it prints into the worker's log (logger ``docproc.vllm``), and
  restarts it with exponential backoff when it exits, for as long as the worker runs. The
  server runs in a process group of its own, and the whole group is killed when its API
  process exits or the worker stops: vLLM's engine core and workers (``VLLM::EngineCore``)
  would otherwise outlive it and keep the model's memory.

The served model name is ``DOCPROC_MODEL`` (``DOCPROC_OPENAI_MODEL`` when set), the
name every request carries.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from docproc.base.errors import EngineUnavailable
from docproc.base.settings import Settings
from workers.engines.served import served_model, tiling_kwargs

logger = logging.getLogger(__name__)
server_log = logging.getLogger("docproc.vllm")

RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)
HEALTHY_RESET_S = 300.0  # a server that ran this long restarts from the first backoff again


def vllm_command(settings: Settings, *, host: str = "127.0.0.1") -> list[str]:
    """The command line of the vLLM server the worker starts: one image a prompt, compact
    JSON from the grammar (the extract guarantee needs it), the model under its docproc name."""
    s = settings
    command = [
        s.vllm_python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", s.model,
        "--served-model-name", served_model(s),
        "--host", host, "--port", str(s.vllm_port),
        "--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
        "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        "--max-num-seqs", str(max(s.model_server_in_flight, 1)),
        # the tile budget docproc tiles with (tile parity, workers/engines/served.py)
        "--mm-processor-kwargs", json.dumps(tiling_kwargs(s, original=s.trust_remote_code)),
    ]
    if s.model_revision:
        command += ["--revision", s.model_revision]
    if s.trust_remote_code:  # the original (non -hf) InternVL checkpoints need it
        command.append("--trust-remote-code")
    if s.openai_api_key is not None:
        command += ["--api-key", s.openai_api_key.get_secret_value()]
    return command + shlex.split(s.vllm_args)


def wait_until_ready(base_url: str, *, timeout_s: float, process: "VLLMProcess | None" = None,
                     api_key: str | None = None) -> None:
    """Poll ``GET {base_url}/models`` until it answers 200; EngineUnavailable after ``timeout_s``
    (or at once when the supervised process gave up)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    url = base_url.rstrip("/") + "/models"
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5.0, headers=headers)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        if process is not None and process.closed:
            break
        time.sleep(1.0)
    raise EngineUnavailable(f"the model server at {base_url} did not become ready within {timeout_s:g} s "
                            f"(last: {last})")


class VLLMProcess:
    """One supervised ``vllm`` server process: started, logged, restarted with backoff."""

    def __init__(self, command: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.env = env
        self.restarts = 0
        self.closed = False
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="docproc-vllm-supervisor", daemon=True)

    def start(self) -> "VLLMProcess":
        self._spawn()
        self._thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        logger.info("model server: starting %s", shlex.join(_redacted(self.command)))
        with self._lock:
            try:
                self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, errors="replace", env=self.env, start_new_session=True)
            except OSError as exc:
                self.closed = True
                raise EngineUnavailable(f"the vLLM server could not be started ({exc}); set DOCPROC_VLLM_PYTHON "
                                        "to the python of an environment with vLLM") from exc
        threading.Thread(target=self._pump, args=(self._proc,), name="docproc-vllm-log", daemon=True).start()

    @staticmethod
    def _pump(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server_log.info("%s", line.rstrip())

    def _supervise(self) -> None:
        attempt = 0
        while not self.closed:
            proc = self._proc
            started = time.monotonic()
            code = proc.wait() if proc is not None else -1
            if proc is not None:
                _kill_group(proc, signal.SIGKILL)  # its engine processes outlive it, holding the model's memory
            if self.closed:
                return
            if time.monotonic() - started > HEALTHY_RESET_S:
                attempt = 0
            delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
            logger.error("model server: vLLM exited with code %s; restarting in %.0f s", code, delay)
            attempt += 1
            time.sleep(delay)
            if self.closed:
                return
            self.restarts += 1
            try:
                self._spawn()
            except EngineUnavailable:
                logger.exception("model server: restart failed; giving up")
                return

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop supervising and stop the server (SIGTERM, then SIGKILL)."""
        self.closed = True
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc, signal.SIGKILL)  # whatever of the server is left (its engine core, workers)
        proc.wait()


def _kill_group(proc: subprocess.Popen[str], sig: int) -> None:
    """Signal the server's whole process group (it runs in a session of its own): vLLM's API
    process forks an engine core and workers that a signal to it alone leaves behind."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _redacted(command: list[str]) -> list[str]:
    return [("***" if i and command[i - 1] == "--api-key" else part) for i, part in enumerate(command)]


@dataclass
class ModelServer:
    """Where the worker's pages go, and the process behind it when the worker started one."""

    base_url: str
    kind: str
    process: VLLMProcess | None = None

    def wait_ready(self, settings: Settings) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key is not None else None
        wait_until_ready(self.base_url, timeout_s=settings.model_server_start_timeout_s, process=self.process,
                         api_key=key)

    def close(self) -> None:
        if self.process is not None:
            self.process.close()


def server_for(settings: Settings) -> ModelServer | None:
    """The model server of ``DOCPROC_MODEL_SERVER`` (started when it says ``vllm``), or None
    for the in-process engine."""
    value = settings.model_server.strip()
    if not value:
        return None
    if value == "vllm":
        process = VLLMProcess(vllm_command(settings)).start()
        return ModelServer(f"http://127.0.0.1:{settings.vllm_port}/v1", "vllm", process)
    if value.startswith(("http://", "https://")):
        return ModelServer(value, settings.model_server_kind)
    raise EngineUnavailable(f"DOCPROC_MODEL_SERVER={value!r}: expected '' (in-process), 'vllm' or an http(s) URL")
