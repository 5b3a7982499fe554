"""Turn upstream CustomResourceDefinition YAML into the JSON schemas kept here.

    python tests/schemas/extract.py CRD.yaml VERSION OUT.json --source "owner/repo@tag:path"

Takes ``spec.versions[name=VERSION].schema.openAPIV3Schema`` of the CRD, drops the
``status`` subtree and every ``description`` (the schema of fields is what the tests
need; the prose stays upstream), and records where it came from. The tests add
``additionalProperties: false`` at load time, so the files stay faithful to upstream.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# Keywords whose value is a map of property names to schemas: their keys are field
# names, not keywords, so a field that happens to be called "description" survives.
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")


def strip(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strip(sub) for sub in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = strip(value)
        else:
            out[key] = value
    return out


def extract(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    spec = crd["spec"]
    for entry in spec["versions"]:
        if entry["name"] == version:
            break
    else:
        raise SystemExit(f"{crd['metadata']['name']} has no version {version}")
    if not entry.get("served", False):
        raise SystemExit(f"{crd['metadata']['name']} does not serve {version}")
    schema = strip(entry["schema"]["openAPIV3Schema"])
    schema.get("properties", {}).pop("status", None)
    return {
        "$comment": f"Field schema of {spec['names']['kind']} {spec['group']}/{version}, "
        f"extracted by tests/schemas/extract.py from {source}; descriptions and status removed.",
        "x-kubernetes-group-version-kind": [
            {"group": spec["group"], "version": version, "kind": spec["names"]["kind"]}
        ],
        **schema,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path)
    parser.add_argument("version")
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", required=True, help="where the CRD came from, e.g. owner/repo@tag:path")
    args = parser.parse_args(argv)
    documents = [doc for doc in yaml.safe_load_all(args.crd.read_text()) if doc]
    crds = [doc for doc in documents if doc.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise SystemExit(f"{args.crd}: expected one CustomResourceDefinition, found {len(crds)}")
    schema = extract(crds[0], args.version, args.source)
    args.out.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
