"""Render a kustomize directory without kubectl: ``python scripts/render_k8s.py k8s/overlays/gpu``.

It implements the part of kustomize that ``k8s/`` uses, and refuses anything else so that a
manifest change needing more is noticed rather than rendered wrongly:

- ``resources``: YAML files (every document in them) and directories holding a Kustomization;
- ``components``: directories holding a Component, applied after the resources in order;
- ``patches``: strategic-merge patches, from ``path`` or inline ``patch``, matched to a resource
  by kind and name (or by ``target``); lists merge on the Kubernetes merge key of their field;
- ``images``: ``newName``, ``newTag`` and ``digest`` for the containers of pods and pod templates.

Where ``kubectl`` is installed, ``tests/k8s`` checks that both render the same objects.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images"}

# patchMergeKey of the list fields a patch here may touch (from the Kubernetes API types).
# Lists of any other field are replaced by the patch, as the API server's merge does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}


class RenderError(ValueError):
    """The directory uses something this renderer does not implement, or is inconsistent."""


def resource_id(resource: Resource) -> tuple[str, str, str, str]:
    """The identity kustomize keys a resource by: group, kind, namespace, name."""
    group = str(resource.get("apiVersion", "")).rpartition("/")[0]
    meta = resource.get("metadata") or {}
    return group, str(resource.get("kind")), str(meta.get("namespace", "")), str(meta.get("name"))


def _load_documents(path: Path) -> list[Resource]:
    with path.open() as handle:
        documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or "kind" not in doc:
            raise RenderError(f"{path}: every document must be a Kubernetes object")
    return documents


def _kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            with candidate.open() as handle:
                document = yaml.safe_load(handle) or {}
            if not isinstance(document, dict):
                raise RenderError(f"{candidate}: not a kustomization")
            unknown = set(document) - SUPPORTED_KEYS
            if unknown:
                raise RenderError(f"{candidate}: unsupported fields {sorted(unknown)}")
            return document
    raise RenderError(f"{directory}: no kustomization file")


def _merge_list(base: list[Any], patch: list[Any], key: str | None) -> list[Any]:
    if key is None or not all(isinstance(item, dict) and key in item for item in base + patch):
        return copy.deepcopy(patch)
    # kustomize puts the patch's elements first, in the patch's order, then the elements only
    # the base has, in the base's order.
    by_key = {item[key]: item for item in base}
    merged = []
    for item in patch:
        if "$patch" in item:
            raise RenderError(f"patch directive {item['$patch']!r} is not supported")
        existing = by_key.get(item[key])
        merged.append(copy.deepcopy(item) if existing is None else strategic_merge(existing, item))
    patched = {item[key] for item in patch}
    merged += [copy.deepcopy(item) for item in base if item[key] not in patched]
    return merged


def _list_merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # Container ports merge on containerPort, Service ports on port.
        first = items[0] if items else {}
        return "containerPort" if "containerPort" in first else "port"
    return MERGE_KEYS.get(field)


def strategic_merge(base: Any, patch: Any) -> Any:
    """Merge ``patch`` into ``base`` the way a strategic-merge patch does (no directives)."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for field, value in patch.items():
        if field.startswith("$"):
            raise RenderError(f"patch directive {field!r} is not supported")
        if value is None:
            merged.pop(field, None)
        elif isinstance(value, list) and isinstance(merged.get(field), list):
            key = _list_merge_key(field, merged[field] + value)
            merged[field] = _merge_list(merged[field], value, key)
        elif isinstance(value, dict) and isinstance(merged.get(field), dict):
            merged[field] = strategic_merge(merged[field], value)
        else:
            merged[field] = copy.deepcopy(value)
    return merged


def _patch_documents(entry: dict[str, Any], directory: Path) -> list[Resource]:
    if set(entry) - {"path", "patch", "target"}:
        raise RenderError(f"{directory}: unsupported patch fields {sorted(entry)}")
    if "path" in entry:
        documents = _load_documents(directory / entry["path"])
    else:
        documents = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict):
            raise RenderError(f"{directory}: only strategic-merge patches are supported")
    return documents


def _matches(resource: Resource, patch: Resource, target: dict[str, Any] | None) -> bool:
    group, kind, namespace, name = resource_id(resource)
    if target is not None:
        if set(target) - {"kind", "name", "group", "version", "namespace"}:
            raise RenderError(f"unsupported patch target selector {sorted(target)}")
        wanted = {"group": group, "kind": kind, "namespace": namespace, "name": name}
        return all(wanted[field] == value for field, value in target.items() if field != "version")
    _, patch_kind, patch_namespace, patch_name = resource_id(patch)
    return (kind, name) == (patch_kind, patch_name) and patch_namespace in ("", namespace)


def apply_patches(
    resources: list[Resource], entries: Iterable[dict[str, Any]], directory: Path
) -> None:
    for entry in entries:
        target = entry.get("target")
        for patch in _patch_documents(entry, directory):
            hits = [i for i, res in enumerate(resources) if _matches(res, patch, target)]
            if not hits:
                raise RenderError(f"{directory}: patch matches no resource: {resource_id(patch)}")
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
            if target is not None:
                # A targeted patch may name any resource; its own name must not rename them.
                body["metadata"] = {
                    k: v for k, v in (body.get("metadata") or {}).items() if k != "name"
                }
            for index in hits:
                resources[index] = strategic_merge(resources[index], body)


def _pod_specs(resource: Resource) -> Iterator[dict[str, Any]]:
    spec = resource.get("spec") or {}
    if resource.get("kind") == "Pod":
        yield spec
    template = (spec.get("template") or {}).get("spec")
    if template:
        yield template
    job = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    if job:
        yield job


def _split_image(image: str) -> tuple[str, str]:
    """Split ``name[:tag][@digest]`` into the name and the rest (with its separator)."""
    digest_at = image.find("@")
    if digest_at >= 0:
        return image[:digest_at], image[digest_at:]
    colon = image.rfind(":")
    if colon > image.rfind("/"):
        return image[:colon], image[colon:]
    return image, ""


def apply_images(resources: list[Resource], images: Iterable[dict[str, Any]]) -> None:
    for rule in images:
        if set(rule) - {"name", "newName", "newTag", "digest"}:
            raise RenderError(f"unsupported image fields {sorted(rule)}")
        for resource in resources:
            for pod_spec in _pod_specs(resource):
                for field in ("initContainers", "containers"):
                    for container in pod_spec.get(field) or []:
                        name, suffix = _split_image(str(container.get("image", "")))
                        if name != rule["name"]:
                            continue
                        if "digest" in rule:
                            suffix = "@" + rule["digest"]
                        elif "newTag" in rule:
                            suffix = ":" + str(rule["newTag"])
                        container["image"] = rule.get("newName", name) + suffix


def _add(resources: list[Resource], new: Iterable[Resource], origin: Path) -> None:
    seen = {resource_id(res) for res in resources}
    for resource in new:
        if resource_id(resource) in seen:
            raise RenderError(f"{origin}: {resource_id(resource)} is defined twice")
        seen.add(resource_id(resource))
        resources.append(resource)


def render(directory: Path | str, *, component: bool = False) -> list[Resource]:
    """The objects ``kubectl kustomize directory`` would print, in resource order."""
    directory = Path(directory)
    spec = _kustomization(directory)
    expected = "Component" if component else "Kustomization"
    if spec.get("kind", "Kustomization") != expected:
        raise RenderError(f"{directory}: expected a {expected}, found {spec.get('kind')}")
    resources: list[Resource] = []
    for entry in spec.get("resources") or []:
        path = directory / entry
        _add(resources, render(path) if path.is_dir() else _load_documents(path), directory)
    for entry in spec.get("components") or []:
        path = directory / entry
        part = _kustomization(path)
        if part.get("kind") != "Component" or part.get("components"):
            raise RenderError(f"{path}: expected a Component without nested components")
        for item in part.get("resources") or []:
            item_path = path / item
            loaded = render(item_path) if item_path.is_dir() else _load_documents(item_path)
            _add(resources, loaded, path)
        apply_patches(resources, part.get("patches") or [], path)
        apply_images(resources, part.get("images") or [])
    apply_patches(resources, spec.get("patches") or [], directory)
    apply_images(resources, spec.get("images") or [])
    return resources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        resources = render(args.directory)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(resources, sys.stdout, sort_keys=False, explicit_start=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
