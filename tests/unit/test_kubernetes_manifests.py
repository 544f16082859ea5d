"""deploy/kubernetes/: every manifest against a current Kubernetes release's schema (offline, with
kubernetes-validate), and the contract between the manifests, the image and the config."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import latest_version, validate

from devtools import REPO
from devtools.config import server_settings

KUBERNETES = REPO / "deploy" / "kubernetes"
FILES = sorted(KUBERNETES.glob("**/*.yaml")) + sorted(KUBERNETES.glob("**/*.yaml.template"))
READINESS = ["python", "-m", "client.readiness"]
KEY_RULE = re.compile(r"[A-Za-z0-9._~+/=-]{32,}")  # what deploy/edge/start-edge.sh accepts as the shared key


def documents() -> list[tuple[Path, dict]]:
    return [(file, doc) for file in FILES for doc in yaml.safe_load_all(file.read_text()) if doc]


def the(kind: str, file: str | None = None) -> dict:
    [doc] = [doc for path, doc in documents() if doc["kind"] == kind and (file is None or path.name == file)]
    return doc


def container(name: str) -> dict:
    spec = the("Deployment")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def walk(node):
    """Every (key, value) pair anywhere in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_the_manifests_are_there_and_validate_against_the_newest_kubernetes_schema():
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "Secret"} <= kinds  # fmt: skip
    version = latest_version()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (1, 33), version  # a current release
    for path, doc in documents():
        validate(doc, version, strict=True)  # strict: an unknown (misspelt) field fails too


def test_every_probe_of_torchserve_is_the_readiness_command_and_none_is_ping():
    torchserve = container("torchserve")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = torchserve[probe]["exec"]["command"]
        assert command[:3] == READINESS, (probe, command)
    # generous liveness: a worker that TorchServe restarts (seconds) never gets the container killed
    liveness = torchserve["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120
    for path, doc in documents():
        assert not [value for key, value in walk(doc) if key == "httpGet"], f"{path.name}: an httpGet probe"
        assert "/ping" not in yaml.safe_dump(doc), path.name


def test_the_secret_is_a_template_whose_placeholder_no_edge_accepts():
    [template] = [path for path, doc in documents() if doc["kind"] == "Secret"]
    assert template.name.endswith(".template")  # `kubectl apply -f deploy/kubernetes/` skips it
    secret = the("Secret")
    assert "data" not in secret
    for value in secret["stringData"].values():
        assert not KEY_RULE.fullmatch(value), "a usable key is committed"
    mounted = the("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == secret["metadata"]["name"] for v in mounted)


def test_only_the_edge_port_is_open_and_the_service_targets_it():
    edge = container("edge")
    [port] = [p for p in edge["ports"] if p["name"] == "edge"]
    policy = the("NetworkPolicy", "networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == the("Deployment")["spec"]["selector"]["matchLabels"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
    [service_port] = the("Service")["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    assert the("Service")["spec"]["selector"] == the("Deployment")["spec"]["template"]["metadata"]["labels"]


def test_the_metrics_port_serves_the_edge_metrics_listener_and_admits_only_the_monitoring_namespace():
    edge = container("edge")
    [port] = [p for p in edge["ports"] if p["name"] == "metrics"]
    env = {item["name"]: item["value"] for item in edge["env"]}
    assert env["IMGSIM_EDGE_METRICS_LISTEN"] == str(port["containerPort"])
    assert env["IMGSIM_TORCHSERVE_METRICS"] == server_settings()["metrics_address"].removeprefix("http://")
    policy = the("NetworkPolicy", "networkpolicy-metrics.yaml")
    assert policy["spec"]["podSelector"] == the("NetworkPolicy", "networkpolicy.yaml")["spec"]["podSelector"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
    [source] = rule["from"]
    assert list(source) == ["namespaceSelector"]  # never open to every namespace
    assert "metrics.conf.template" in " ".join(container("edge-files")["command"])


def test_torchserve_listens_on_the_pods_loopback_only():
    torchserve = container("torchserve")
    assert "ports" not in torchserve  # nothing published from this container
    command = " ".join(torchserve["command"])
    assert "--inference-address" not in command and "--set" not in command  # config.properties as it is
    for key in ("inference_address", "management_address", "metrics_address"):
        assert server_settings()[key].startswith("http://127.0.0.1:"), key
    env = {e["name"]: e["value"] for e in container("edge")["env"]}
    assert env["IMGSIM_TORCHSERVE"] == server_settings()["inference_address"].removeprefix("http://")


def test_the_cpu_request_is_workers_times_threads():
    workers = yaml.safe_load((REPO / "config" / "model-config.yaml").read_text())
    assert workers["minWorkers"] == workers["maxWorkers"]
    [threads] = re.findall(r"^ARG THREADS=(\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    resources = container("torchserve")["resources"]
    assert resources["requests"]["cpu"] == str(workers["minWorkers"] * int(threads))
    assert resources["limits"] == resources["requests"]  # the threads get the CPUs they count on
    for name in ("torch_threads", "decode_threads"):  # the keys the Dockerfile rewrites with THREADS
        assert re.search(rf"^  {name}: ", (REPO / "config" / "model-config.yaml").read_text(), re.MULTILINE)


def test_the_autoscaler_and_the_disruption_budget_name_the_deployment():
    deployment = the("Deployment")
    for path, doc in documents():
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]), path.name
            assert doc["spec"]["minReplicas"] >= 2, path.name  # the budget below leaves one serving
    budget = the("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    cpu = the("HorizontalPodAutoscaler", "hpa.yaml")["spec"]["metrics"][0]["containerResource"]
    assert (cpu["name"], cpu["container"]) == ("cpu", "torchserve")


def test_the_edge_files_the_pod_copies_are_in_the_image():
    copied = container("edge-files")["command"][1:-1]
    assert copied and all((REPO / path).is_file() for path in copied), copied
    assert "COPY deploy/edge/ deploy/edge/" in (REPO / "Dockerfile").read_text()
    assert container("edge")["command"][-1] == "/edge/start-edge.sh"


@pytest.mark.parametrize("placeholder", [the("Secret")["stringData"]["key"], "short-key"])
def test_the_edge_refuses_to_start_on_a_placeholder_or_short_key(tmp_path, placeholder):
    shared, backend = tmp_path / "shared", tmp_path / "backend"
    shared.write_text(placeholder)
    backend.write_text("AbCd1234\n")
    env = {"PATH": "/usr/bin:/bin", "IMGSIM_SHARED_KEY_FILE": str(shared), "IMGSIM_BACKEND_KEY_FILE": str(backend),
           "IMGSIM_EDGE_PREFIX": str(tmp_path / "edge")}  # fmt: skip
    result = subprocess.run(["sh", str(REPO / "deploy" / "edge" / "start-edge.sh")], env=env, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode != 0 and "the shared key" in result.stderr, result.stderr
    assert not (tmp_path / "edge" / "conf" / "nginx.conf").exists()  # nginx never started
