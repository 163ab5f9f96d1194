"""docker-compose: the file validates (docker-compose config), the .env.example settings
reach the service, and the serving image's code path imports without torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE_ONLY = {  # .env variables that configure compose itself, not the service
    "CNCLIP_MODELS_DIR",
    "CNCLIP_BUNDLE_NAME",
    "CNCLIP_INDEXES_DIR",
    "CNCLIP_INDEX_NAME",
    "CNCLIP_REPLICAS",
    "CNCLIP_WORKERS_PER_REPLICA",
    "CNCLIP_CPUS_PER_REPLICA",
    "CNCLIP_MEMORY_PER_REPLICA",
    "CNCLIP_GPU_BACKEND",
    "CNCLIP_PUBLISH_HOST",
    "CNCLIP_MILVUS_REPLICAS",
    "CNCLIP_MILVUS_INDEX_NAME",
}


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_config(tmp_path: Path, *args: str) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is installed by make install (scripts/system-deps.sh)"
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(ROOT / "docker-compose.yml", project)
    shutil.copytree(ROOT / "deploy", project / "deploy", dirs_exist_ok=True)
    shutil.copy(ROOT / ".env.example", project / ".env")
    result = subprocess.run(
        [binary, *args, "config"], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_the_compose_file_validates(tmp_path: Path) -> None:
    config = compose_config(tmp_path)
    services = config["services"]
    always = {name for name, service in services.items() if not service.get("profiles")}
    assert always == {"api", "gateway", "redis", "prometheus", "grafana"}
    assert services["api-gpu"]["profiles"] == services["dcgm-exporter"]["profiles"] == ["gpu"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["api"]["environment"]["CNCLIP_CACHE__REDIS_URL"] == "redis://redis:6379/0"
    assert services["api"]["healthcheck"]["test"][0] == "CMD"
    assert any(v.endswith(":/models:ro") for v in services["api"]["volumes"])
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in command
    mounts = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= mounts
    gpu = compose_config(tmp_path, "--profile", "gpu")["services"]
    assert {"api-gpu", "dcgm-exporter"} <= set(gpu)
    devices = gpu["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_the_milvus_profile_serves_from_milvus_standalone(tmp_path: Path) -> None:
    services = compose_config(tmp_path, "--profile", "milvus")["services"]
    milvus = {"api-milvus", "milvus", "milvus-etcd", "milvus-minio"}
    assert milvus <= set(services)
    assert all(services[name]["profiles"] == ["milvus"] for name in milvus)
    api = services["api-milvus"]
    assert api["environment"]["CNCLIP_INDEX"] == "milvus://milvus:19530/catalog"
    assert api["environment"]["CNCLIP_CACHE__REDIS_URL"] == "redis://redis:6379/0"
    assert api["networks"]["default"]["aliases"] == ["api"]  # behind the gateway
    assert set(api["depends_on"]) == {"redis", "milvus"}
    assert api["healthcheck"]["test"] == services["api"]["healthcheck"]["test"]
    server = services["milvus"]
    assert server["command"] == ["milvus", "run", "standalone"]
    assert server["environment"] == {
        "ETCD_ENDPOINTS": "milvus-etcd:2379",
        "MINIO_ADDRESS": "milvus-minio:9000",
    }
    assert set(server["depends_on"]) == {"milvus-etcd", "milvus-minio"}
    (port,) = server["ports"]
    published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
    assert published.startswith("127.0.0.1:19530")  # loopback only, for cnclip index build
    for name in ("Dockerfile.serve", "Dockerfile.gpu"):
        text = (ROOT / "deploy" / name).read_text(encoding="utf-8")
        assert re.search(r'pip install "\.\[serve,[a-z,]*milvus\]"', text), name


def test_every_env_setting_is_used(tmp_path: Path) -> None:
    from service.settings import Settings

    values = env_example()
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for key in values:
        if key in COMPOSE_ONLY or not key.startswith("CNCLIP_"):
            assert re.search(rf"\$\{{{key}[:}}]", compose), (
                f"{key} is not used in docker-compose.yml"
            )
    service_keys = {
        k: v for k, v in values.items() if k.startswith("CNCLIP_") and k not in COMPOSE_ONLY
    }
    (tmp_path / "bundle").mkdir()
    env = {**service_keys, "CNCLIP_BUNDLE": str(tmp_path / "bundle")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert settings.text_batch.max_batch_size == int(values["CNCLIP_TEXT_BATCH__MAX_BATCH_SIZE"])
    assert settings.image_batch.max_wait_ms == float(values["CNCLIP_IMAGE_BATCH__MAX_WAIT_MS"])
    assert settings.cache.search_ttl_s == int(values["CNCLIP_CACHE__SEARCH_TTL_S"])
    assert settings.security.api_key is not None
    assert settings.port == int(values["CNCLIP_PORT"]) and settings.threads == int(
        values["CNCLIP_THREADS"]
    )
    # Each service key names a real setting (pydantic-settings would ignore a misspelt one).
    fields = {f"CNCLIP_{name.upper()}" for name in Settings.model_fields}
    for key in service_keys:
        top = key.split("__")[0]
        assert top in fields, f"{key}: no such service setting"
        if "__" in key:
            section = Settings.model_fields[top.removeprefix("CNCLIP_").lower()].annotation
            assert key.split("__")[1].lower() in section.model_fields, key  # type: ignore[union-attr]


def test_the_serving_path_needs_no_torch() -> None:
    """What the serving image installs (the serve extra) runs cnclip serve's imports."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from cnclip.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--bundle" in result.stdout
    code = "import sys; sys.modules['torch'] = None\nimport service.app, service.ui, index\n"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_serving_images_copy_every_package_the_serving_path_imports() -> None:
    code = (
        "import sys, pathlib; import service.app, service.ui, index, cnclip.cli\n"
        "cnclip.cli.build_parser()\n"
        f"root = pathlib.Path({str(ROOT)!r})\n"
        "files = [pathlib.Path(getattr(m, '__file__', None) or '/')\n"
        "         for m in list(sys.modules.values())]\n"
        "ours = {f.relative_to(root).parts[0] for f in files if f.is_relative_to(root)}\n"
        "print(' '.join(sorted(p for p in ours if (root / p / '__init__.py').is_file())))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    needed = set(result.stdout.split())
    assert {"service", "index", "runtime", "cnclip"} <= needed
    for name in ("Dockerfile.serve", "Dockerfile.gpu"):
        text = (ROOT / "deploy" / name).read_text(encoding="utf-8")
        copied = set(re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M))
        assert needed <= copied, f"{name} does not copy {sorted(needed - copied)}"


@pytest.mark.parametrize("name", ["Dockerfile.serve", "Dockerfile.gpu", "Dockerfile.train"])
def test_images_run_as_a_user_and_check_health(name: str) -> None:
    text = (ROOT / "deploy" / name).read_text(encoding="utf-8")
    assert re.search(r"^USER cnclip$", text, flags=re.M)
    if name != "Dockerfile.train":
        assert "HEALTHCHECK" in text and "/readyz" in text
        assert "torch" not in text.split("FROM")[-1] or name == "Dockerfile.gpu"
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), f"{name} copies {source}, which does not exist"


def test_the_gateway_configuration_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).is_file(), "nginx is installed by make install (scripts/system-deps.sh)"
    (tmp_path / "logs").mkdir()
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-c",
            str(ROOT / "deploy" / "nginx" / "nginx.conf"),
            "-p",
            str(tmp_path),
            "-g",
            f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize("name", ["Dockerfile.serve", "Dockerfile.gpu", "Dockerfile.train"])
def test_every_pip_install_in_the_images_gets_the_build_inputs(name: str) -> None:
    """deploy/pip/: the extra CA certificates and the wheelhouse reach each pip install."""
    text = (ROOT / "deploy" / name).read_text(encoding="utf-8")
    assert "COPY deploy/pip /tmp/pip" in text
    for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_NO_INDEX"):
        assert f"ARG {arg}" in text
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", text, flags=re.M | re.S)
    installs = [run for run in runs if "pip install" in run]
    assert installs
    for run in installs:
        assert run.index(". /tmp/pip/pip-env.sh") < run.index("pip install"), run


def test_pip_env_trusts_the_extra_certificates_and_prefers_the_wheelhouse(
    tmp_path: Path,
) -> None:
    script = ROOT / "deploy" / "pip" / "pip-env.sh"
    show = f'. {script}; echo "cert=${{PIP_CERT:-}} links=${{PIP_FIND_LINKS:-}}"'
    env = {"PATH": os.environ["PATH"], "CNCLIP_PIP_DIR": str(tmp_path)}
    empty = subprocess.run(["sh", "-c", show], env=env, capture_output=True, text=True)
    assert empty.stdout.strip() == "cert= links="
    extra = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca-certificates.crt").write_text(extra)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "numpy-2.0-cp311-none-any.whl").write_bytes(b"")
    given = subprocess.run(["sh", "-c", show], env=env, capture_output=True, text=True)
    trusted = tmp_path / "trusted.pem"
    assert given.stdout.strip() == f"cert={trusted} links={tmp_path / 'wheels'}"
    text = trusted.read_text()
    assert text.endswith(extra)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    if system.is_file():
        assert text.startswith(system.read_text()[:200])
