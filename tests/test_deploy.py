"""Deployment files: the Dockerfile (linted; its command and health check run as plain processes from a
copy of exactly what it copies), the Kubernetes manifests' wiring, and the README's configuration table
against the settings code. No Docker engine runs here."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from falcon_oauth.settings import Settings, load_settings
from tests.conftest import ROOT, free_port, stop, wait_for_port

DOCKERFILE = (ROOT / "Dockerfile").read_text()
MANIFESTS = ROOT / "deploy" / "kubernetes"


@pytest.mark.integration
def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    assert DOCKERFILE.count("FROM python:3.11-slim") == 2  # multi-stage
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M) and "EXPOSE 8080" in DOCKERFILE


def image_layout(tmp_path: Path) -> Path:
    """The files the final stage copies, laid out as in the image's WORKDIR."""
    app = tmp_path / "app"
    app.mkdir()
    final = DOCKERFILE.split("FROM python:3.11-slim\n", 1)[1]
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", final, re.M):
        for source in sources.split():
            path = ROOT / source.rstrip("/")
            if path.is_dir():
                shutil.copytree(path, app / path.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, app / path.name)
    return app


def exec_form(instruction: str) -> list[str]:
    line = next(line for line in DOCKERFILE.splitlines() if line.startswith(instruction))
    return json.loads(line[line.index("CMD ") + 4:] if instruction == "HEALTHCHECK" else line[len("CMD "):])


def image_env() -> dict[str, str]:
    env_block = re.search(r"^ENV (.+?)(?=^\S)", DOCKERFILE, re.M | re.S).group(1)
    return dict(re.findall(r"(\w+)=(\S+)", env_block))


@pytest.mark.parametrize("command", ["CMD", "gunicorn"])
def test_the_images_command_and_health_check_work_as_plain_processes(authserver, tmp_path, command):
    app = image_layout(tmp_path)
    port = free_port()
    env = {**os.environ, **image_env(), **authserver.environ(), "PORT": str(port),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    argv = exec_form("CMD") if command == "CMD" else ["gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app"]
    argv = [sys.executable if part == "python" else part for part in argv]
    if argv[0] == "gunicorn":
        argv = [sys.executable, "-m", *argv]
    health = [sys.executable if part == "python" else part for part in exec_form("HEALTHCHECK")]
    process = subprocess.Popen(argv, cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        assert subprocess.run(health, cwd=app, env=env, timeout=30).returncode == 0
        body = {"credentials": {"type": "bearer", "token": authserver.token()}}
        answer = httpx.post(f"http://127.0.0.1:{port}/plugin/authenticate", json=body, timeout=10).json()
        assert answer["result"]["authenticated"] is True
    finally:
        stop(process)
    assert subprocess.run(health, cwd=app, env=env, timeout=30).returncode == 1


# -- Kubernetes -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["apiVersion"] and document["metadata"]["name"]
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def test_every_manifest_kind_is_there(objects):
    kinds = sorted(kind for kind, _ in objects)
    assert kinds == sorted(["ConfigMap", "Secret", "Deployment", "Deployment", "Service", "Service",
                            "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "NetworkPolicy"])


def test_the_plugin_deployment_is_wired(objects):
    deployment = objects[("Deployment", "falcon-oauth")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # gunicorn and Prometheus write here
    refs = {next(iter(ref)): next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert ("ConfigMap", refs["configMapRef"]) in objects and ("Secret", refs["secretRef"]) in objects
    # the readiness probe must outlast one readiness check of the authorization server
    config = objects[("ConfigMap", refs["configMapRef"])]["data"]
    assert container["readinessProbe"]["timeoutSeconds"] > float(config["AUTH_SERVER_TIMEOUT"])


def test_service_pdb_and_hpa_point_at_the_deployment(objects):
    labels = objects[("Deployment", "falcon-oauth")]["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "falcon-oauth")]["spec"]
    assert service["selector"].items() <= labels.items() and service["ports"][0]["targetPort"] == "http"
    assert objects[("PodDisruptionBudget", "falcon-oauth")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = objects[("HorizontalPodAutoscaler", "falcon-oauth")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "falcon-oauth")


def test_memcached_servers_names_the_memcached_service(objects):
    config = objects[("ConfigMap", "falcon-oauth-config")]["data"]
    host, port = config["MEMCACHED_SERVERS"].split(":")
    service = objects[("Service", host)]["spec"]
    memcached = objects[("Deployment", host)]["spec"]["template"]
    assert service["ports"][0]["port"] == int(port)
    assert service["selector"].items() <= memcached["metadata"]["labels"].items()
    assert memcached["spec"]["containers"][0]["ports"][0]["name"] == service["ports"][0]["targetPort"]


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector's meaning: matchLabels and matchExpressions, all of them; {} selects all."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, "a key Kubernetes would not read"
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[operator]:
            return False
    return True


CLIENT_LABEL = {"falcon-oauth/client": "true"}


def test_the_selector_semantics_used_below():
    assert selects({}, {"a": "1"}) and selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not selects({"matchLabels": {"a": "1"}}, {"a": "2"})
    assert not selects({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"})
    assert selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["2"]}]}, {})


def guarded_ingress(objects: dict, deployment: str) -> tuple[dict, list[dict], list[dict]]:
    """The one NetworkPolicy that guards a deployment's pods, its ingress rules, and the pods' ports."""
    pods = objects[("Deployment", deployment)]["spec"]["template"]
    policies = [doc["spec"] for (kind, _), doc in objects.items() if kind == "NetworkPolicy"
                and selects(doc["spec"]["podSelector"], pods["metadata"]["labels"])]
    (policy,) = policies
    assert "Ingress" in policy["policyTypes"]
    return policy, policy["ingress"], [port for c in pods["spec"]["containers"] for port in c["ports"]]


def pod_labels(objects: dict) -> dict[str, dict]:
    return {name: doc["spec"]["template"]["metadata"]["labels"] for (kind, name), doc in objects.items()
            if kind == "Deployment"}


def test_only_the_plugins_pods_reach_memcached_and_memcached_reaches_nothing(objects):
    policy, rules, ports = guarded_ingress(objects, "falcon-oauth-memcached")
    service = objects[("Service", "falcon-oauth-memcached")]["spec"]
    (rule,) = rules
    (peer,) = rule["from"]  # an empty or missing "from" would admit everyone
    assert set(peer) == {"podSelector"}  # pods of this namespace: no namespaceSelector, no ipBlock
    admitted = {name for name, labels in pod_labels(objects).items() if selects(peer["podSelector"], labels)}
    assert admitted == {"falcon-oauth"}
    assert not selects(peer["podSelector"], CLIENT_LABEL)  # a client pod is not a plugin pod
    (port,) = rule["ports"]
    assert port["port"] == service["ports"][0]["targetPort"] in {p["name"] for p in ports}
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []


def test_only_labelled_clients_reach_the_plugin(objects):
    _, rules, ports = guarded_ingress(objects, "falcon-oauth")
    service = objects[("Service", "falcon-oauth")]["spec"]
    assert rules
    for rule in rules:
        assert rule["from"]
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() >= CLIENT_LABEL.items()
            assert not any(selects(peer["podSelector"], labels) for labels in pod_labels(objects).values())
            assert selects(peer["podSelector"], {**CLIENT_LABEL, "app.kubernetes.io/name": "mockforge"})
        (port,) = rule["ports"]
        assert port["port"] == service["ports"][0]["targetPort"] in {p["name"] for p in ports}


def test_the_configmap_and_secret_make_valid_settings(objects):
    config = objects[("ConfigMap", "falcon-oauth-config")]["data"]
    secret = objects[("Secret", "falcon-oauth-secrets")]["stringData"]
    known = {f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(config) | set(secret) <= known
    settings = load_settings({**config, **secret})
    assert settings.cache_backend == "memcached" and settings.port == 8080


# -- README ---------------------------------------------------------------------------------------------

def test_the_readme_configuration_table_matches_the_settings():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \|", table, re.M):
        documented |= set(re.findall(r"`([A-Z_]+)`", row))
    settings = {f.name.upper() for f in dataclasses.fields(Settings)} - {"VERSION", "DISCOVERED"}
    assert settings - documented == set(), "settings missing from the README"
    assert documented - settings - {"CONFIG_FILE"} == set(), "README rows that are not settings"


def test_security_md_names_only_settings_that_exist_and_the_readme_links_it():
    text = (ROOT / "SECURITY.md").read_text()
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})(?:=[^`]*)?`", text))
    settings = {f.name.upper() for f in dataclasses.fields(Settings)}
    assert named and named - settings == set(), "SECURITY.md names settings that do not exist"
    assert "](SECURITY.md)" in (ROOT / "README.md").read_text().split("## Security notes", 1)[1]
