"""deploy/k8s: every object valid for its kind, as files and as each overlay renders it.

Rendering needs ``kubectl kustomize``; without kubectl on PATH those tests
skip, and the files are still validated as they are.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.manifests import (
    K8S,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    Manifest,
    documents,
    kubectl,
    manifest_files,
    one,
    render,
    validate,
)

needs_kubectl = pytest.mark.skipif(
    kubectl() is None,
    reason="kubectl is not on PATH: overlays are not rendered (kubectl kustomize); "
    "their files are validated as they are",
)


def test_the_overlays_are_one_per_broker() -> None:
    assert OVERLAYS == ["kafka", "nats", "rabbitmq", "redis"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_file_as_it_is_matches_its_schema(version: str) -> None:
    files = list(manifest_files())
    names = {path.relative_to(K8S).as_posix() for path in files}
    assert {
        "base/deployment.yaml",
        "components/keda/scaledobject.yaml",
        "components/hpa/hpa.yaml",
        "base/servicemonitor.yaml",
    } <= names
    assert {f"overlays/{name}/broker.yaml" for name in OVERLAYS} <= names
    for path in files:
        for doc in documents(path):
            try:
                validate(doc, version)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{path.relative_to(K8S)}: {doc['kind']}: {exc.message} at {exc.path}")


def rendered_variants() -> list[Any]:
    """Each overlay, and the redis one with the HPA component instead of KEDA's."""
    return [*(pytest.param(name, id=name) for name in OVERLAYS), pytest.param("hpa", id="hpa")]


def rendered(variant: str, tmp_path: Path) -> list[Manifest]:
    if variant != "hpa":
        return render(K8S / "overlays" / variant)
    # What a user does to switch: the redis overlay with the other component.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    original = (K8S / "overlays" / "redis" / "kustomization.yaml").read_text()
    k8s = os.path.relpath(K8S, overlay)  # kustomize takes no absolute paths
    text = original.replace("- ../../base", f"- {k8s}/base").replace(
        "- ../../components/keda", f"- {k8s}/components/hpa"
    )
    assert text.count(k8s) == 2, "the redis overlay no longer names base and keda"
    (overlay / "kustomization.yaml").write_text(text)
    (overlay / "broker.yaml").write_text((K8S / "overlays" / "redis" / "broker.yaml").read_text())
    return render(overlay)


@needs_kubectl
@pytest.mark.parametrize("variant", rendered_variants())
def test_each_rendered_overlay_matches_the_schemas(variant: str, tmp_path: Path) -> None:
    objects = rendered(variant, tmp_path)
    autoscaler = "HorizontalPodAutoscaler" if variant == "hpa" else "ScaledObject"
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceMonitor",
            autoscaler,
        ]
    )
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            try:
                validate(obj, version)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{variant}: {obj['kind']}: {exc.message} at {list(exc.path)}")
    assert {obj["metadata"].get("namespace") for obj in objects} == {"orders"}


BROKER_SCHEMES = {"redis": "redis", "rabbitmq": "amqp", "nats": "nats", "kafka": "kafka"}


@needs_kubectl
@pytest.mark.parametrize("variant", rendered_variants())
def test_the_rendered_objects_fit_together(variant: str, tmp_path: Path) -> None:
    objects = rendered(variant, tmp_path)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    container = one([{"kind": "c", **c} for c in pod["spec"]["containers"]], "c")
    pod_labels = pod["metadata"]["labels"]

    def selects_the_pods(selector: dict[str, str], what: str) -> None:
        assert selector, f"{what} selects nothing: an empty selector selects every pod"
        assert selector.items() <= pod_labels.items(), f"{what} {selector} misses {pod_labels}"

    selects_the_pods(deployment["spec"]["selector"]["matchLabels"], "the Deployment")
    service = one(objects, "Service")
    selects_the_pods(service["spec"]["selector"], "the Service")
    pdb = one(objects, "PodDisruptionBudget")
    selects_the_pods(pdb["spec"]["selector"]["matchLabels"], "the PodDisruptionBudget")

    # Service -> container port, ServiceMonitor -> Service port, by name.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert "http" in ports
    monitor = one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http"]
    assert [endpoint["path"] for endpoint in monitor["spec"]["endpoints"]] == ["/metrics"]

    # The image built for the overlay's broker, and that broker's URL.
    broker = "redis" if variant == "hpa" else variant
    assert container["image"].rsplit(":", 1)[1] == broker
    secret = one(objects, "Secret")
    assert secret["stringData"]["MILLSTREAM_BROKER_URL"].startswith(f"{BROKER_SCHEMES[broker]}://")

    # Probes (docs/deploy.md): startup on the consumers, liveness and readiness on their own.
    probes = {
        name: (container[name]["httpGet"]["path"], container[name]["httpGet"]["port"])
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/health/consumers", "http"),
        "livenessProbe": ("/health/live", "http"),
        "readinessProbe": ("/health/ready", "http"),
    }

    # The stop fits in the grace period: preStop, then the linger and the drain.
    config = one(objects, "ConfigMap")["data"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    stop = (
        float(command[1])
        + float(config["MILLSTREAM_SHUTDOWN_LINGER"])
        + float(config["MILLSTREAM_DRAIN_TIMEOUT"])
    )
    assert pod["spec"]["terminationGracePeriodSeconds"] > stop

    # Member name from the pod, settings from the mounted Secret, a writable /tmp only.
    env = {item["name"]: item for item in container["env"]}
    assert env["MILLSTREAM_MEMBER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    secrets_dir = env["MILLSTREAM_SECRETS_DIR"]["value"]
    [secret_volume] = [name for name, mount in mounts.items() if mount["mountPath"] == secrets_dir]
    assert volumes[secret_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    assert container["envFrom"] == [{"configMapRef": {"name": config_name(objects)}}]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [tmp] = [name for name, mount in mounts.items() if mount["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp]
    assert container["resources"]["requests"] and container["resources"]["limits"]

    # The autoscaler scales this Deployment, owns its replica count, and reads
    # the lag of this namespace's Service (the labels Prometheus gives its targets).
    assert "replicas" not in deployment["spec"]
    namespace, service_name = deployment["metadata"]["namespace"], service["metadata"]["name"]
    if variant == "hpa":
        hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
        target = hpa["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        [metric] = hpa["metrics"]
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"service": service_name}
    else:
        scaled = one(objects, "ScaledObject")["spec"]
        target = scaled["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] == deployment["metadata"]["name"]
        [trigger] = scaled["triggers"]
        query = trigger["metadata"]["query"]
        assert f'namespace="{namespace}"' in query and f'service="{service_name}"' in query


def config_name(objects: list[Manifest]) -> str:
    return str(one(objects, "ConfigMap")["metadata"]["name"])


def _broken(path: str, change: Any) -> Manifest:
    obj = copy.deepcopy(documents(K8S / path)[0])
    change(obj)
    return obj


def _container(obj: Manifest) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return containers[0]


BROKEN = {
    "a misspelt probe": (
        "base/deployment.yaml",
        lambda d: _container(d).update(livenesProbe=_container(d).pop("livenessProbe")),
    ),
    "a port as a word": (
        "base/deployment.yaml",
        lambda d: _container(d)["ports"][0].update(containerPort="http"),
    ),
    "a PDB with a misspelt budget": (
        "base/pdb.yaml",
        lambda d: d["spec"].update(unavailable=1),
    ),
    "a ScaledObject's HPA word for its minimum": (
        "components/keda/scaledobject.yaml",
        lambda d: d["spec"].update(minReplicas=d["spec"].pop("minReplicaCount")),
    ),
    "a ScaledObject without a target": (
        "components/keda/scaledobject.yaml",
        lambda d: d["spec"].pop("scaleTargetRef"),
    ),
    "a ServiceMonitor's endpoints as one object": (
        "base/servicemonitor.yaml",
        lambda d: d["spec"].update(endpoints=d["spec"]["endpoints"][0]),
    ),
    "a ServiceMonitor with a misspelt field": (
        "base/servicemonitor.yaml",
        lambda d: d["spec"]["endpoints"][0].update(intervall="15s"),
    ),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_copy_fails(broken: str) -> None:
    path, change = BROKEN[broken]
    obj = _broken(path, change)
    with pytest.raises(jsonschema.ValidationError):
        validate(obj, KUBERNETES_VERSIONS[-1])
    validate(_broken(path, lambda d: None), KUBERNETES_VERSIONS[-1])  # the file itself passes
