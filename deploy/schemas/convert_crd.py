#!/usr/bin/env python3
"""Turns CustomResourceDefinition YAML files into strict JSON Schemas (one per served version).

    python3 deploy/schemas/convert_crd.py OUT_DIR CRD.yaml [CRD.yaml ...]

Each version's `openAPIV3Schema` becomes `<kind>-<group>-<version>.json` (lower case), with the
OpenAPI-only keywords turned into JSON Schema:

- every object that lists `properties` gets `additionalProperties: false` (CRDs are structural:
  the API server prunes unknown fields, so an unknown field in a manifest is a typo that would be
  silently dropped), except where `x-kubernetes-preserve-unknown-fields: true` says otherwise;
- `x-kubernetes-int-or-string: true` accepts an integer or a string;
- `nullable: true` also accepts null;
- `x-kubernetes-embedded-resource: true` objects accept apiVersion/kind/metadata;
- the root accepts apiVersion, kind and metadata (the API server adds them to every schema).

Needs PyYAML only. See README.md beside this file for where the CRDs came from.
"""
import json
import os
import sys

import yaml

OPENAPI_ONLY = {"x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
                "x-kubernetes-validations", "x-kubernetes-group-version-kind", "x-kubernetes-patch-strategy",
                "x-kubernetes-patch-merge-key", "x-kubernetes-embedded-resource",
                "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "nullable",
                "example", "externalDocs", "discriminator", "xml", "readOnly", "writeOnly"}


def convert(node):
    if isinstance(node, list):
        return [convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in OPENAPI_ONLY:
            continue
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {k: convert(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(v) for v in value]
        elif key == "format" and value in ("int32", "int64", "double", "float", "byte", "date-time",
                                            "duration", "int-or-string", "quantity", "uri", "password"):
            # OpenAPI formats that JSON Schema validators would ignore or misread; dropped.
            continue
        else:
            out[key] = value
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("x-kubernetes-int-or-string") is True:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource") is True:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if out.get("type") == "object" and "properties" in out and not preserve \
            and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable") is True and "type" in out:
        t = out["type"]
        out["type"] = [t, "null"] if isinstance(t, str) else list(t) + ["null"]
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    for path in sys.argv[2:]:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                group, kind = spec["group"], spec["names"]["kind"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    schema = convert(version["schema"]["openAPIV3Schema"])
                    props = schema.setdefault("properties", {})
                    props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
                    props["kind"] = {"type": "string", "enum": [kind]}
                    props["metadata"] = {"type": "object"}
                    schema["additionalProperties"] = False
                    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
                    schema["title"] = f"{kind} ({group}/{version['name']}), from {os.path.basename(path)}"
                    name = f"{kind.lower()}-{group}-{version['name']}.json"
                    with open(os.path.join(out_dir, name), "w") as out:
                        json.dump(schema, out, indent=1, sort_keys=True)
                        out.write("\n")
                    print(f"{name}")


if __name__ == "__main__":
    main()
