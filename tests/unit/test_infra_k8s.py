"""infra/k8s/: every manifest valid against the Kubernetes schemas that kubernetes-validate ships
(strict: an unknown field fails too, so a typo is not silently ignored by the API server), and what a
Bookwire deployment needs: probes, resources, non-root, grace periods, a migration Job that is the
only thing migrating, and SSE-friendly ingress annotations."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest version still in common support that these must fit


def manifests() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource, by (kind, name)."""
    return {(doc["kind"], doc["metadata"]["name"]): doc
            for path in manifests() for doc in yaml.safe_load_all(path.read_text()) if doc}


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = resources()[(kind, name)]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("path", manifests(), ids=lambda path: path.name)
def test_valid_against_the_kubernetes_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(resources()[("Deployment", "bookwire-api")])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(resources()[("Deployment", "bookwire-api")])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_api_probes_grace_and_service() -> None:
    spec = pod_spec("Deployment", "bookwire-api")
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert spec["terminationGracePeriodSeconds"] > 60, "long-polls last up to 60 s"
    service = resources()[("Service", "bookwire-api")]
    assert service["spec"]["selector"].items() <= resources()[("Deployment", "bookwire-api")]["spec"]["template"][
        "metadata"]["labels"].items()


@pytest.mark.parametrize(("kind", "name", "command"), [
    ("Deployment", "bookwire-api", "api"), ("Deployment", "bookwire-worker", "worker"),
    ("Deployment", "bookwire-scheduler", "scheduler"), ("Job", "bookwire-migrate", "migrate"),
])
def test_each_part_runs_its_command_non_root_with_resources(kind: str, name: str, command: str) -> None:
    spec = pod_spec(kind, name)
    (container,) = spec["containers"]
    assert container["args"] == [command], "only the Job migrates"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert {"configMapRef": {"name": "bookwire-config"}} in container["envFrom"]
    assert {"secretRef": {"name": "bookwire-secrets"}} in container["envFrom"]


def test_ingress_streams_the_event_endpoints_unbuffered() -> None:
    events = resources()[("Ingress", "bookwire-events")]
    annotations = events["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 60  # > heartbeat and long-poll
    paths = [p["path"] for rule in events["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/v1/events/"]
    for name in ("bookwire", "bookwire-events"):
        annotations = resources()[("Ingress", name)]["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m", name


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [path.name for path in manifests()]
    if shutil.which("kubectl"):  # kubectl's built-in kustomize renders offline
        rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60,
                                  check=True).stdout
        assert len([doc for doc in yaml.safe_load_all(rendered) if doc]) == len(resources())
