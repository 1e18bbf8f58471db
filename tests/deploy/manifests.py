"""Reading the deployment files: YAML documents, kustomize renders and the schemas they obey.

Built-in Kubernetes kinds are validated by kubernetes-validate in strict mode
(an unknown field is an error, as ``kubectl apply`` reports it). The custom
kinds (KEDA's ScaledObject, prometheus-operator's ServiceMonitor) are
validated with jsonschema against their CRDs' OpenAPI schemas, shipped in
``schemas/``, made strict the same way: an object schema that lists its
properties admits no others unless it says ``x-kubernetes-preserve-unknown-fields``.
The CRDs' CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())

# The oldest Kubernetes the manifests are for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())

CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}

Manifest = dict[str, Any]


def documents(path: Path) -> list[Manifest]:
    """The YAML documents of ``path`` (empty ones left out)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> Iterator[Path]:
    """Every YAML file under deploy/k8s that holds Kubernetes objects (not kustomize's own)."""
    for path in sorted(K8S.rglob("*.yaml")):
        docs = documents(path)
        objects = all(
            isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc for doc in docs
        )
        if objects and not any(doc["kind"] in KUSTOMIZE_KINDS for doc in docs):
            yield path


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def _rendered(directory: str) -> tuple[Manifest, ...]:
    command = [kubectl() or "kubectl", "kustomize", directory]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
    return tuple(yaml.safe_load_all(done.stdout))


def render(directory: Path) -> list[Manifest]:
    """``kubectl kustomize directory``: the objects an apply would send (fresh copies)."""
    return copy.deepcopy(list(_rendered(str(directory))))


def one(objects: list[Manifest], kind: str) -> Manifest:
    """The only object of ``kind`` among ``objects``."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate(obj: Manifest, version: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is a valid object of its kind."""
    schema = custom_schema(obj.get("apiVersion", ""), obj.get("kind", ""))
    if schema is not None:
        jsonschema.Draft7Validator(schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@functools.cache
def _custom_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    name = CUSTOM_KINDS.get((api_version, kind))
    if name is None:
        return None
    schema = _strict(json.loads((SCHEMAS / name).read_text()))
    schema["properties"]["apiVersion"]["const"] = api_version
    schema["properties"]["kind"]["const"] = kind
    return schema


def custom_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The strict JSON schema of a custom kind, or None for any other kind."""
    return _custom_schema(api_version, kind)


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever Kubernetes prunes unknown fields."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict
