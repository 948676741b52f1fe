"""The deployment files, checked without a Docker engine: the Dockerfiles pass hadolint, the
entrypoint does what it says (with a stand-in `hearth`, and with the real one serving the real
model), and the compose and Kubernetes files point their probes at the right routes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import MODELS_DIR, free_port, model_file

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(name: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / name)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _run_with_stub(tmp_path: Path, args: list[str], **env: str) -> list[str]:
    """Run the entrypoint with a `hearth` that only records how it was called."""
    calls = tmp_path / "calls"
    stub = tmp_path / "bin" / "hearth"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    environment = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", **env}
    subprocess.run(["sh", str(ENTRYPOINT), *args], env=environment, check=True, timeout=30)
    return calls.read_text().splitlines()


def test_serve_pulls_the_default_model_then_serves(tmp_path: Path) -> None:
    assert _run_with_stub(tmp_path, []) == ["models pull smollm2", "serve"]


def test_serve_flags_and_the_pull_list_are_passed_on(tmp_path: Path) -> None:
    calls = _run_with_stub(tmp_path, ["serve", "--port", "9000"], HEARTH_PULL="smollm2 gemma3-270m")
    assert calls == ["models pull smollm2", "models pull gemma3-270m", "serve --port 9000"]


def test_an_empty_pull_list_skips_pulling(tmp_path: Path) -> None:
    assert _run_with_stub(tmp_path, ["serve"], HEARTH_PULL="") == ["serve"]


def test_other_commands_run_as_hearth_commands(tmp_path: Path) -> None:
    assert _run_with_stub(tmp_path, ["models", "list"]) == ["models list"]


def test_the_entrypoint_serves_the_real_model_and_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        '[[models]]\nname = "smollm2"\npackage = "smollm2"\npreload = true\nn_ctx = 512\nslots = 2\n'
    )
    model_file("smollm2")  # present already: the pull below finds it and does nothing
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HEARTH_CONFIG": str(config),
        "HEARTH_MODELS_DIR": str(MODELS_DIR),
        "HEARTH_PORT": str(port),
        "HEARTH_KV_CACHE_DISK_BYTES": "0",
        "HEARTH_RESPONSES_DB": str(tmp_path / "responses.sqlite3"),
        "HEARTH_LOG_FORMAT": "json",
    }
    server = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            time.sleep(0.2)
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 2}
        assert (
            httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30).status_code
            == 200
        )
    finally:
        server.send_signal(signal.SIGTERM)  # the exec'd server itself gets it
        output = server.communicate(timeout=60)[0].decode()
    # uvicorn drains, then re-raises the signal so the exit status reports it.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "already present" in output
    assert '"request_id": "req_' in output  # JSON log lines


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_kubernetes_probes_and_service() -> None:
    deployment = _yaml(DOCKER / "k8s" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["ports"][0]["containerPort"] == 8000
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    service = _yaml(DOCKER / "k8s" / "service.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_the_inference_pool_picker_and_autoscaler_point_at_the_replicas() -> None:
    deployment = _yaml(DOCKER / "k8s" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["HEARTH_METRICS_COMPAT"] == "vllm"
    inference = DOCKER / "k8s" / "inference"
    pool, route = yaml.safe_load_all((inference / "inferencepool.yaml").read_text())
    assert pool["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pool["spec"]["targetPorts"] == [{"number": container["ports"][0]["containerPort"]}]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == pool["metadata"]["name"]
    documents = {d["kind"]: d for d in yaml.safe_load_all((inference / "epp.yaml").read_text())}
    picker, service = documents["Deployment"], documents["Service"]
    assert service["metadata"]["name"] == pool["spec"]["endpointPickerRef"]["name"]
    assert (
        service["spec"]["ports"][0]["port"] == pool["spec"]["endpointPickerRef"]["port"]["number"]
    )
    (epp,) = picker["spec"]["template"]["spec"]["containers"]
    assert f"--pool-name={pool['metadata']['name']}" in epp["args"]
    assert (
        documents["RoleBinding"]["subjects"][0]["name"]
        == picker["spec"]["template"]["spec"]["serviceAccountName"]
    )
    hpa = _yaml(inference / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_shared_kv_claim_fits_the_deployments_state_volume() -> None:
    deployment = _yaml(DOCKER / "k8s" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kv-states"] == env["HEARTH_KV_CACHE_DIR"]
    assert "kv-states" in {v["name"] for v in pod["volumes"]}
    claim = _yaml(DOCKER / "k8s" / "inference" / "kv-shared.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # The commented swap in deployment.yaml names this claim.
    text = (DOCKER / "k8s" / "deployment.yaml").read_text()
    assert f"claimName: {claim['metadata']['name']}" in text


def test_compose_builds_the_cpu_image_with_a_models_volume() -> None:
    compose = _yaml(DOCKER / "compose.yaml")
    service = compose["services"]["hearth"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert "models:/models" in service["volumes"]
    assert (DOCKER / "Dockerfile").read_text().count('VOLUME ["/models"]') == 1
