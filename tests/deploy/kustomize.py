"""A small Kustomize builder for the features k8s/ uses, so tests need no binary.

No kustomize (or kubectl) binary is installable from PyPI, so this implements the
subset of ``kustomize build`` that recstream's manifests use, following kustomize's
documented semantics, and refuses everything else (an unknown kustomization field,
``$patch`` directives, label options that touch selectors) instead of guessing:

- ``resources``: files (multi-document YAML) and directories with a kustomization;
- ``namespace``: set on every namespaced object;
- ``labels`` with ``pairs`` only (no ``includeSelectors``/``includeTemplates``):
  added to ``metadata.labels``;
- ``configMapGenerator`` from ``envs`` files and ``literals``, ``behavior``
  create/merge/replace, a content-hash name suffix in kustomize's format (10
  characters; it changes whenever the data changes, but is not bit-identical to
  kustomize's, so the cross-check compares names modulo that suffix), and
  references to the ConfigMap renamed;
- ``patches``: strategic merge (maps merged, ``null`` deletes, lists of containers,
  env, volumes, volumeMounts, ports... merged on their Kubernetes patch merge key,
  other lists replaced) and JSON 6902 (add, remove, replace, move, copy, test);
- ``images``: ``newName``, ``newTag``, ``digest`` on containers and initContainers.

Where a ``kustomize`` or ``kubectl`` binary is on PATH, ``test_real_kustomize_agrees``
checks this builder's output against it (on the machine this was written on,
``kubectl kustomize`` with Kustomize v5.5.0 agrees on every object of both overlays,
except the generated ConfigMap's hash suffix).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "build", "config_map_hash", "json6902", "strategic_merge"]

_SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "configMapGenerator",
    "patches",
    "images",
}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
# Kubernetes' x-kubernetes-patch-merge-key for the lists the manifests patch.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
_GENERATED = "__generated__"


class KustomizeError(ValueError):
    """A kustomization this builder cannot build (or that kustomize would reject)."""


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{path}: not a Kubernetes object: {str(doc)[:80]}")
    return docs


def _parse_env_file(path: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise KustomizeError(f"{path}:{lineno}: expected KEY=VALUE")
        key, value = line.split("=", 1)
        data[key] = value
    return data


def _literal(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise KustomizeError(f"literal {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    return key, value


def config_map_hash(name: str, data: dict[str, str]) -> str:
    """A kustomize-style name suffix: 10 characters that change with the data."""
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": name},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # Go's json.Marshal escapes these for HTML safety.
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# ---------------------------------------------------------------- strategic merge


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Apply a strategic merge patch (the subset described in the module docstring)."""
    if isinstance(patch, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise KustomizeError(f"strategic merge directive {key} is not supported")
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        merge_key = _MERGE_KEYS.get(field)
        if field == "ports" and all(isinstance(p, dict) for p in base + patch):
            merge_key = "containerPort" if any("containerPort" in p for p in patch) else "port"
        if merge_key is None or not all(isinstance(p, dict) for p in base + patch):
            return copy.deepcopy(patch)  # atomic list: replaced, as Kubernetes does
        out_list = copy.deepcopy(base)
        for item in patch:
            if merge_key not in item:
                raise KustomizeError(f"{field}: patch item without merge key {merge_key}")
            for i, existing in enumerate(out_list):
                if existing.get(merge_key) == item[merge_key]:
                    out_list[i] = strategic_merge(existing, item, field)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


# ---------------------------------------------------------------- JSON 6902


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise KustomizeError(f"path {path!r} does not exist") from exc
    if not parts:
        raise KustomizeError("operations on the whole document are not supported")
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path), path)
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, IndexError, ValueError) as exc:
        raise KustomizeError(f"path {path!r} does not exist") from exc


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path), path)
    try:
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)
    except (KeyError, IndexError, ValueError) as exc:
        raise KustomizeError(f"remove: path {path!r} does not exist") from exc


def _add(doc: Any, path: str, value: Any) -> None:
    parent, last = _parent(doc, _pointer(path), path)
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            index = int(last)
            if not 0 <= index <= len(parent):
                raise KustomizeError(f"add: index {index} out of range at {path!r}")
            parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KustomizeError(f"add: parent of {path!r} is not a container")


def json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply RFC 6902 operations to a copy of ``doc``."""
    out = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise KustomizeError(f"operation without path: {op}")
        if kind == "add":
            _add(out, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(out, path)
        elif kind == "replace":
            _remove(out, path)
            _add(out, path, copy.deepcopy(op["value"]))
        elif kind == "move":
            _add(out, path, _remove(out, op["from"]))
        elif kind == "copy":
            _add(out, path, copy.deepcopy(_get(out, op["from"])))
        elif kind == "test":
            if _get(out, path) != op["value"]:
                raise KustomizeError(f"test failed at {path!r}")
        else:
            raise KustomizeError(f"unknown JSON 6902 op {kind!r}")
    return out


# ---------------------------------------------------------------- transformers


def _split_image(ref: str) -> tuple[str, str | None, str | None]:
    name, _, digest = ref.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    _set_image(container, images)
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


def _set_image(container: dict[str, Any], images: list[dict[str, str]]) -> None:
    if "image" not in container:
        return
    name, tag, digest = _split_image(container["image"])
    for image in images:
        if image["name"] != name:
            continue
        unknown = set(image) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise KustomizeError(f"images: unsupported fields {sorted(unknown)}")
        name = image.get("newName", name)
        if "digest" in image:
            tag, digest = None, image["digest"]
        elif "newTag" in image:
            tag, digest = str(image["newTag"]), None
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        return


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"patch target: unsupported selectors {sorted(unknown)}")
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"].get("namespace"),
    }
    return all(checks[k] == v for k, v in target.items())


def _apply_patch(
    resources: list[dict[str, Any]], entry: dict[str, Any], root: Path
) -> list[dict[str, Any]]:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"patches: unsupported fields {sorted(unknown)}")
    text = (root / entry["path"]).read_text() if "path" in entry else entry.get("patch")
    if not isinstance(text, str):
        raise KustomizeError(f"patch without path or patch: {entry}")
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):
        if not target:
            raise KustomizeError("a JSON 6902 patch needs a target")
        hits = [i for i, r in enumerate(resources) if _matches(r, target)]
        if not hits:
            raise KustomizeError(f"patch target {target} matches nothing")
        for i in hits:
            resources[i] = json6902(resources[i], body)
        return resources
    if not isinstance(body, dict):
        raise KustomizeError(f"patch is neither a list nor an object: {text[:80]}")
    selector = target or {"kind": body["kind"], "name": body["metadata"]["name"]}
    hits = [i for i, r in enumerate(resources) if _matches(r, selector)]
    if not hits:
        raise KustomizeError(f"strategic merge patch for {selector} matches nothing")
    for i in hits:
        patch = copy.deepcopy(body)
        if target:  # a selector-targeted SMP must not rename what it hits
            patch.get("metadata", {}).pop("name", None)
        resources[i] = strategic_merge(resources[i], patch)
    return resources


def _build(root: Path) -> list[dict[str, Any]]:
    files = [root / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")]
    found = [f for f in files if f.exists()]
    if not found:
        raise KustomizeError(f"{root}: no kustomization.yaml")
    spec = yaml.safe_load(found[0].read_text()) or {}
    unsupported = set(spec) - _SUPPORTED
    if unsupported:
        raise KustomizeError(f"{found[0]}: unsupported fields {sorted(unsupported)}")

    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (root / entry).resolve()
        if path.is_dir():
            resources += _build(path)
        elif path.is_file():
            resources += _load_yaml_docs(path)
        else:
            raise KustomizeError(f"{root}: resource {entry!r} not found")

    seen: set[tuple[str, str]] = set()
    for obj in resources:
        if _key(obj) in seen:
            raise KustomizeError(f"{root}: duplicate resource {_key(obj)}")
        seen.add(_key(obj))

    for gen in spec.get("configMapGenerator", []):
        unknown = set(gen) - {"name", "envs", "literals", "behavior"}
        if unknown:
            raise KustomizeError(f"configMapGenerator: unsupported fields {sorted(unknown)}")
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data.update(_parse_env_file(root / env))
        data.update(_literal(item) for item in gen.get("literals", []))
        behavior = gen.get("behavior", "create")
        existing = [
            r for r in resources if r.get(_GENERATED) and r["metadata"]["name"] == gen["name"]
        ]
        if behavior == "create":
            if existing:
                raise KustomizeError(f"ConfigMap {gen['name']} already generated; use merge")
            resources.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": gen["name"]},
                    "data": data,
                    _GENERATED: True,
                }
            )
        elif behavior in ("merge", "replace"):
            if len(existing) != 1:
                raise KustomizeError(f"{behavior}: no generated ConfigMap {gen['name']}")
            target = existing[0]
            target["data"] = {**target["data"], **data} if behavior == "merge" else data
        else:
            raise KustomizeError(f"configMapGenerator behavior {behavior!r}")

    for entry in spec.get("patches", []):
        resources = _apply_patch(resources, entry, root)

    namespace = spec.get("namespace")
    if namespace:
        for obj in resources:
            if obj["kind"] == "Namespace":
                if obj["metadata"]["name"] != namespace:
                    raise KustomizeError("a Namespace object named unlike `namespace:`")
            elif obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace

    for label in spec.get("labels", []):
        if set(label) - {"pairs"}:
            raise KustomizeError(f"labels: only `pairs` is supported, got {sorted(label)}")
        for obj in resources:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])

    if spec.get("images"):
        for obj in resources:
            _set_images(obj, spec["images"])
    return resources


_REF_PATHS = {
    # (container of the reference) -> key holding the ConfigMap name
    "configMapRef": "name",
    "configMapKeyRef": "name",
    "configMap": "name",
}


def _rename_refs(node: Any, renames: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REF_PATHS and isinstance(value, dict) and value.get("name") in renames:
                value["name"] = renames[value["name"]]
            _rename_refs(value, renames)
    elif isinstance(node, list):
        for item in node:
            _rename_refs(item, renames)


def build(path: Path | str) -> list[dict[str, Any]]:
    """``kustomize build PATH``: the list of objects, generated names suffixed."""
    resources = _build(Path(path).resolve())
    renames: dict[str, str] = {}
    for obj in resources:
        if obj.pop(_GENERATED, False):
            name = obj["metadata"]["name"]
            obj["metadata"]["name"] = f"{name}-{config_map_hash(name, obj['data'])}"
            renames[name] = obj["metadata"]["name"]
    for obj in resources:
        if obj["kind"] != "ConfigMap":
            _rename_refs(obj, renames)
    return resources


def dump(resources: list[dict[str, Any]]) -> str:
    """The build as one multi-document YAML string (kustomize's output format)."""
    return yaml.safe_dump_all(resources, sort_keys=True)


_NAME_OK = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def check_names(resources: list[dict[str, Any]]) -> list[str]:
    """Names that are not valid DNS-1123 subdomains (what the API server rejects)."""
    return [
        f"{r['kind']}/{r['metadata']['name']}"
        for r in resources
        if not _NAME_OK.match(r["metadata"]["name"]) or len(r["metadata"]["name"]) > 253
    ]
