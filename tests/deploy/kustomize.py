"""A small renderer of the kustomizations in deploy/kubernetes, for offline checks where no
kustomize binary can be installed (none on PyPI or Debian). It implements only what those
kustomizations use, as kustomize does it: ``resources`` (files and directories),
``namespace``, ``labels`` (without selectors), ``images``, ``replicas`` and ``patches``
(strategic merge, matched by kind and name; lists of named items merge by name).
Anything else in a kustomization is an error, so the renderer never silently diverges."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pathlib import Path

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "patches",
}
# Kinds without a namespace among those deployed here.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources of the kustomization in ``directory``, as ``kubectl kustomize``."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}: unsupported fields {sorted(unknown)}")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(render(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only file patches are supported: {patch}")
        for doc in yaml.safe_load_all((directory / patch["path"]).read_text()):
            _apply_patch(resources, doc, directory)
    for replicas in kustomization.get("replicas", []):
        [target] = [
            r for r in resources if r["kind"] in SCALABLE and _named(r, None, replicas["name"])
        ]
        target["spec"]["replicas"] = replicas["count"]
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    new_name = image.get("newName", name)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError("labels on selectors or templates are not supported")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    return resources


def _named(resource: dict[str, Any], kind: str | None, name: str) -> bool:
    return resource["metadata"]["name"] == name and kind in (None, resource["kind"])


def _apply_patch(resources: list[dict[str, Any]], patch: dict[str, Any], where: Path) -> None:
    targets = [r for r in resources if _named(r, patch["kind"], patch["metadata"]["name"])]
    if len(targets) != 1:
        raise KustomizeError(f"{where}: patch matches {len(targets)} resources: {patch['kind']}")
    merged = _merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _all_named(base + patch):
        # Merged in place (the order of env matters to $(VAR) references), new ones appended.
        patches = {item["name"]: item for item in patch}
        merged = [_merge(i, patches[i["name"]]) if i["name"] in patches else i for i in base]
        names = {item["name"] for item in base}
        return merged + [copy.deepcopy(item) for item in patch if item["name"] not in names]
    return copy.deepcopy(patch)


def _all_named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] not in WORKLOADS:
        return []
    pod = resource["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def _split_image(image: str) -> tuple[str, str | None]:
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return name, tag or None
