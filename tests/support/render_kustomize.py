"""Renders a kustomize directory without kubectl, for validating deploy/k8s in CI.

Supports only what deploy/k8s uses: `resources` (files and directories, recursively),
`namePrefix` (names, and the references the base makes to its own ConfigMap, Secret and
Service selectors' objects), `labels` (`pairs`, `includeSelectors`), `images` (newName, newTag)
and strategic-merge `patches` by file (maps merged key by key, matched by kind and name).
Anything else in a kustomization.yaml is an error, so the renderer cannot silently skip it.

    python render_kustomize.py DIR > rendered.yaml
"""
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namePrefix", "labels", "images", "patches"}


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base.get(key), value) if key in base else value
        return out
    return patch


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def render(directory):
    kustomization = load(os.path.join(directory, "kustomization.yaml"))[0]
    unknown = set(kustomization) - KNOWN
    if unknown:
        sys.exit(f"{directory}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    objects = []
    for resource in kustomization.get("resources", []):
        path = os.path.join(directory, resource)
        objects += render(path) if os.path.isdir(path) else load(path)
    for patch in kustomization.get("patches", []):
        for p in load(os.path.join(directory, patch["path"])):
            matches = [i for i, o in enumerate(objects)
                       if o["kind"] == p["kind"] and o["metadata"]["name"] == p["metadata"]["name"]]
            if not matches:
                sys.exit(f"patch {patch['path']}: no {p['kind']} {p['metadata']['name']}")
            for i in matches:
                objects[i] = merge(objects[i], p)
    prefix = kustomization.get("namePrefix", "")
    renamed = {(o["kind"], o["metadata"]["name"]): prefix + o["metadata"]["name"] for o in objects}
    for o in objects:
        o["metadata"]["name"] = prefix + o["metadata"]["name"]
        spec = o.get("spec", {}).get("template", {}).get("spec", {})
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = renamed.get(("ConfigMap", volume["configMap"]["name"]), volume["configMap"]["name"])
            if "secret" in volume:
                volume["secret"]["secretName"] = renamed.get(("Secret", volume["secret"]["secretName"]), volume["secret"]["secretName"])
    for label in kustomization.get("labels", []):
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeSelectors"):
                spec = o.get("spec", {})
                if o["kind"] == "Service":
                    spec.setdefault("selector", {}).update(label["pairs"])
                elif "selector" in spec:
                    spec["selector"].setdefault("matchLabels", {}).update(label["pairs"])
                if "template" in spec:
                    spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for o in objects:
            for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
    return objects


if __name__ == "__main__":
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
