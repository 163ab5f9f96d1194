"""The compose stack, running (make test-deploy): our images and docker-compose.yml, built
and brought up by deploy/local/stack.sh, checked through the gateway on 127.0.0.1 only.

The tests run in file order against one stack: endpoints, replicas, the shared cache,
Prometheus, catalog changes, the containers, scaling to three, a killed replica, and
last `make deploy-down`. Figures (image size, requests lost to a kill) are written to
.deploy/report.json and printed.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.stack

STACK = ROOT / "deploy" / "local" / "stack.sh"
REPORT = ROOT / ".deploy" / "report.json"


def stack(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@functools.cache
def settings() -> dict[str, str]:
    """The stack's settings (ports, project, the daemon started), as stack.sh saved them."""
    result = stack("env")
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def gateway() -> str:
    return f"http://127.0.0.1:{settings()['CNCLIP_PORT']}"


def docker(*args: str) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def compose(*args: str) -> str:
    result = stack("compose", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def containers(service: str) -> list[str]:
    """The running containers of a service."""
    found = compose("ps", "-q", service).split()
    return [c for c in found if inspect(c, "{{.State.Running}}") == "true"]


def inspect(container: str, template: str) -> str:
    return docker("inspect", "-f", template, container)


def replica_names() -> set[str]:
    """The replicas' host names, which they give in X-Cnclip-Replica."""
    return {inspect(c, "{{.Config.Hostname}}") for c in containers("api")}


def api_key() -> str:
    for line in (ROOT / ".env").read_text(encoding="utf-8").splitlines():
        if line.startswith("CNCLIP_SECURITY__API_KEY="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(".env sets no CNCLIP_SECURITY__API_KEY")


def record(**figures: Any) -> None:
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report.update(figures)
    REPORT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(figures, ensure_ascii=False))


def picture(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def healthy_replicas() -> int:
    states = [inspect(c, "{{.State.Health.Status}}") for c in containers("api")]
    return sum(state == "healthy" for state in states)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway(), timeout=30) as http:
        try:
            ready = http.get("/readyz")
        except httpx.TransportError as exc:
            pytest.fail(f"no stack answers on {gateway()} ({exc}): run make deploy-up first")
        assert ready.status_code == 200, ready.text
        yield http


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"] and error["code"]
    if code is not None:
        assert error["code"] == code


# --------------------------------------------------------------------------- endpoints


def test_every_endpoint_answers_through_the_gateway(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model_id"] and ready["index_version"]
    catalog = client.get("/v1/catalog").json()
    assert catalog["count"] > 0 and catalog["model_id"] == ready["model_id"]

    found = client.post("/v1/search/text", json={"query": "杯子", "top_k": 5})
    assert found.status_code == 200, found.text
    items = found.json()["items"]
    assert len(items) == 5 and all(item["id"] and "relevance" in item for item in items)
    assert {item["metadata"]["kind"] for item in items} == {"杯子"}  # the word is a filter
    assert found.headers["x-cache"] in {"hit", "miss"}

    red = picture((220, 30, 30))
    by_image = client.post("/v1/search/image", json={"image": {"base64": b64(red)}, "top_k": 3})
    assert by_image.status_code == 200, by_image.text
    assert len(by_image.json()["items"]) == 3
    upload = client.post(
        "/v1/search/image",
        files={"image": ("red.png", red, "image/png")},
        data={"top_k": "2", "target": "texts"},
    )
    assert upload.status_code == 200, upload.text
    assert len(upload.json()["items"]) == 2

    labels = ["杯子", "帽子", "鞋子"]
    classified = client.post("/v1/classify", json={"image": {"base64": b64(red)}, "labels": labels})
    assert classified.status_code == 200, classified.text
    scores = classified.json()["labels"]
    assert {row["label"] for row in scores} == set(labels)
    assert abs(sum(row["probability"] for row in scores) - 1) < 1e-3

    texts = client.post("/v1/embed/text", json={"texts": ["红色的杯子", "蓝色的帽子"]})
    assert texts.status_code == 200, texts.text
    body = texts.json()
    assert len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == body["dim"]
    assert body["model_id"] == ready["model_id"]
    images = client.post("/v1/embed/image", files=[("images", ("a.png", red, "image/png"))] * 2)
    assert images.status_code == 200, images.text
    assert len(images.json()["embeddings"]) == 2

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "cnclip_request_duration_seconds" in metrics.text


def test_errors_are_the_json_errors(client: httpx.Client) -> None:
    assert_error(client.post("/v1/search/text", json={"query": "  "}), 400)
    broken = client.post(
        "/v1/search/text", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(broken, 422, "invalid_request")
    assert_error(client.post("/v1/search/text", json={"query": "杯子", "top_k": 0}), 422)
    not_an_image = {"image": {"base64": "bm90IGFuIGltYWdl"}}
    assert_error(client.post("/v1/search/image", json=not_an_image), 400, "invalid_image")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/search/text"), 405, "method_not_allowed")
    assert_error(client.post("/v1/catalog/delete", json={"ids": ["x"]}), 401)
    too_big = client.post(
        "/v1/embed/text",
        content=b"x" * 21_000_000,
        headers={"content-type": "application/json"},
    )
    assert_error(too_big, 413, "body_too_large")


# --------------------------------------------------------------------------- replicas


def test_both_replicas_serve(client: httpx.Client) -> None:
    names = replica_names()
    assert len(names) == int(settings()["CNCLIP_REPLICAS"]) == 2
    seen = {client.get("/healthz").headers["x-cnclip-replica"] for _ in range(20)}
    assert seen == names


def test_a_query_cached_by_one_replica_is_a_hit_on_the_other(client: httpx.Client) -> None:
    query = {"query": f"蓝色的帽子 {uuid.uuid4().hex[:8]}", "top_k": 3}
    first = client.post("/v1/search/text", json=query)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    origin = first.headers["x-cnclip-replica"]
    for _ in range(10):
        again = client.post("/v1/search/text", json=query)
        if again.headers["x-cnclip-replica"] != origin:
            assert again.headers["x-cache"] == "hit"
            assert again.json() == first.json()
            return
    raise AssertionError("the gateway sent every request to one replica")


# --------------------------------------------------------------------------- Prometheus


def prometheus(path: str, **params: str) -> dict[str, Any]:
    port = settings()["PROMETHEUS_PORT"]
    response = httpx.get(f"http://127.0.0.1:{port}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "success"
    return body["data"]  # type: ignore[no-any-return]


def api_targets_up() -> int:
    targets = prometheus("/api/v1/targets", state="active")["activeTargets"]
    return sum(t["health"] == "up" for t in targets if t["labels"]["job"] == "cnclip-api")


def api_targets() -> int:
    targets = prometheus("/api/v1/targets", state="active")["activeTargets"]
    return sum(t["labels"]["job"] == "cnclip-api" for t in targets)


def dashboard_query(title: str) -> str:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/cnclip.json").read_text())
    for panel in dashboard["panels"]:
        if panel.get("title") == title:
            expr: str = panel["targets"][0]["expr"]
            return expr.replace("$__rate_interval", "1m")
    raise AssertionError(f"no panel {title!r}")


def test_prometheus_finds_every_replica_and_the_dashboard_has_data(
    client: httpx.Client,
) -> None:
    wait_for(lambda: api_targets_up() == 2 and api_targets() == 2, 60, "2 replicas up")
    for _ in range(5):
        client.post("/v1/search/text", json={"query": "绿色的鞋子", "top_k": 3})
    replicas = prometheus("/api/v1/query", query=dashboard_query("Replicas up"))["result"]
    assert float(replicas[0]["value"][1]) == 2

    def requests_have_data() -> bool:
        query = dashboard_query("Requests per second by endpoint")
        return bool(prometheus("/api/v1/query", query=query)["result"])

    wait_for(requests_have_data, 60, "the dashboard's request rate has data")


# --------------------------------------------------------------------------- catalog


def test_a_catalog_change_reaches_every_replica(client: httpx.Client) -> None:
    before = client.get("/v1/catalog").json()
    item = f"deploy-{uuid.uuid4().hex[:8]}"
    added = client.post(
        "/v1/catalog/items",
        headers={"x-api-key": api_key()},
        json={
            "items": [
                {
                    "id": item,
                    "image": {"base64": b64(picture((20, 200, 40)))},
                    "metadata": {"title": "绿色的测试"},
                }
            ]
        },
    )
    assert added.status_code == 200, added.text
    version = added.json()["version"]
    assert version != before["version"] and added.json()["count"] == before["count"] + 1
    names = replica_names()
    poll_s = 2.0  # the service's CNCLIP_INDEX_POLL_S default
    deadline = time.monotonic() + poll_s + 8  # the poll, plus loading the version
    serving: dict[str, str] = {}
    while time.monotonic() < deadline:
        answer = client.get("/v1/catalog")
        serving[answer.headers["x-cnclip-replica"]] = answer.json()["version"]
        if set(serving) == names and set(serving.values()) == {version}:
            break
        time.sleep(0.2)
    assert serving == dict.fromkeys(names, version)
    hits = [
        client.post(
            "/v1/search/image", json={"image": {"base64": b64(picture((20, 200, 40)))}, "top_k": 1}
        ).json()
        for _ in range(4)
    ]
    assert all(hit["items"][0]["id"] == item for hit in hits)


# --------------------------------------------------------------------------- containers


def test_containers_run_as_non_root_and_turn_healthy() -> None:
    for container in containers("api"):
        assert inspect(container, "{{.Config.User}}") == "cnclip"
        assert docker("exec", container, "id", "-u") == "10001"
        assert inspect(container, "{{.State.Health.Status}}") == "healthy"
    for service in ("gateway", "redis"):
        (container,) = containers(service)
        wait_for(
            lambda c=container: inspect(c, "{{.State.Health.Status}}") == "healthy",
            60,
            f"{service} healthy",
        )
    (redis,) = containers("redis")
    assert docker("exec", redis, "sh", "-c", "ps -o user= -p 1 || stat -c %U /proc/1") == "redis"
    (prom,) = containers("prometheus")
    assert docker("exec", prom, "id", "-un") == "nobody"


def test_the_serving_image_holds_no_torch() -> None:
    image = inspect(containers("api")[0], "{{.Image}}")
    probe = (
        "import importlib.util as u;"
        "print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)"
    )
    assert docker("run", "--rm", "--entrypoint", "python", image, "-c", probe) == "None True"
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    record(serving_image_mb=round(size / 1e6))


# --------------------------------------------------------------------------- scaling


def test_scale_to_three_replicas(client: httpx.Client) -> None:
    compose("up", "-d", "--no-recreate", "--scale", "api=3")
    wait_for(lambda: healthy_replicas() == 3, 180, "3 healthy replicas")
    wait_for(lambda: api_targets_up() == 3, 60, "Prometheus shows 3 replicas up")
    names = replica_names()
    assert len(names) == 3
    seen: set[str] = set()
    deadline = time.monotonic() + 20  # nginx asks Docker's DNS again every 5 s
    while seen != names and time.monotonic() < deadline:
        seen.add(client.get("/healthz").headers["x-cnclip-replica"])
    assert seen == names


def under_load(action: Callable[[], None], clients: int = 4) -> dict[str, int]:
    """Searches from ``clients`` threads through the gateway for 5 s, then ``action``,
    then 15 s more: how many requests there were, how many failed, and how many of those
    sent a second after the action succeeded."""
    outcomes: list[tuple[float, bool]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        with httpx.Client(base_url=gateway(), timeout=30) as http:
            n = 0
            while not stop.is_set():
                n += 1
                query = {"query": f"黑色的包 {worker}-{n}", "top_k": 3}  # never cached
                try:
                    ok = http.post("/v1/search/text", json=query).status_code == 200
                except httpx.TransportError:
                    ok = False
                with lock:
                    outcomes.append((time.monotonic(), ok))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    acted_at = time.monotonic()
    action()
    time.sleep(15)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    later = [ok for at, ok in outcomes if at > acted_at + 1]
    return {
        "clients": clients,
        "requests": len(outcomes),
        "lost": sum(not ok for _, ok in outcomes),
        "later": len(later),
        "later_ok": sum(later),
    }


def test_docker_kill_of_a_replica_under_load_loses_no_more_than_in_flight() -> None:
    victim = containers("api")[0]
    figures = under_load(lambda: docker("kill", victim))
    record(docker_kill=figures)
    assert figures["later"] > 0 and figures["later_ok"] == figures["later"]
    assert figures["lost"] <= figures["clients"], figures
    # Docker's restart policies leave a container stopped by `docker kill` (or `docker
    # stop`) alone; docker-compose up starts it again.
    assert inspect(victim, "{{.State.Status}}") == "exited"
    compose("up", "-d", "--no-recreate", "--scale", "api=3")
    wait_for(
        lambda: inspect(victim, "{{.State.Health.Status}}") == "healthy",
        180,
        "the killed replica healthy again",
    )


def test_a_crashed_replica_loses_no_more_than_in_flight_and_the_restart_policy_revives_it() -> None:
    """A replica's process killed from outside (SIGKILL, as the kernel's OOM killer does):
    restart: unless-stopped starts it again."""
    victim = containers("api")[0]
    restarts = int(inspect(victim, "{{.RestartCount}}"))
    pid = int(inspect(victim, "{{.State.Pid}}"))
    figures = under_load(lambda: os.kill(pid, signal.SIGKILL))
    record(crash=figures)
    assert figures["later"] > 0 and figures["later_ok"] == figures["later"]
    assert figures["lost"] <= figures["clients"], figures
    wait_for(
        lambda: int(inspect(victim, "{{.RestartCount}}")) > restarts,
        60,
        "the restart policy restarted the replica",
    )
    wait_for(
        lambda: inspect(victim, "{{.State.Health.Status}}") == "healthy",
        180,
        "the restarted replica healthy again",
    )


# --------------------------------------------------------------------------- down


def test_deploy_down_leaves_nothing_behind() -> None:
    project = settings()["COMPOSE_PROJECT_NAME"]
    started_pid = settings().get("CNCLIP_DOCKERD_PID", "")
    result = stack("down")
    assert result.returncode == 0, result.stderr
    assert "nothing of the stack is left" in result.stderr, result.stderr
    if started_pid:
        assert not Path(f"/proc/{started_pid}").exists(), "the daemon it started still runs"
    else:
        label = f"label=com.docker.compose.project={project}"
        assert docker("ps", "-aq", "--filter", label) == ""
        assert docker("network", "ls", "-q", "--filter", label) == ""
        assert docker("volume", "ls", "-q", "--filter", label) == ""
    assert not (ROOT / "deploy/pip/ca-certificates.crt").exists()
