#!/usr/bin/env python3
"""The Helm chart's values.schema.json is strict (called by run.sh).

Helm validates the merged values against the schema before rendering; an
object without `additionalProperties: false` lets a misspelt key through
silently (the template reads the default instead). Checks, with the same
JSON-schema draft Helm uses (draft 7):

  * the schema itself is valid draft 7;
  * every object in it lists its keys (`additionalProperties: false`), or is
    a typed map (`additionalProperties: {schema}`), or is one of the
    pass-through Kubernetes objects named in PASS_THROUGH;
  * values.yaml and every preset / test values file, merged over it as Helm
    does, validate;
  * mutation: a misspelt key added to EVERY object of the merged values that
    the schema describes is refused, with the error at that object.

Prints `ok    <name>` / `FAIL  <name>: <why>` lines; exits 1 on any failure.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/vargpt"
VALUES_FILES = sorted(CHART.glob("values-*.yaml")) + sorted((ROOT / "ci/deploy-check/values").glob("*.yaml"))
# Definitions whose objects are Kubernetes API types passed through to the
# manifests as is; the rendered manifests are validated strictly instead.
PASS_THROUGH = {"#/definitions/k8sObject"}
FAILED = 0


def ok(name: str) -> None:
    print(f"ok    {name}", flush=True)


def fail(name: str, why: str) -> None:
    global FAILED
    FAILED += 1
    print(f"FAIL  {name}: " + why.strip().replace("\n", "\n        "), flush=True)


def check(name: str, cond: bool, why: str = "") -> None:
    ok(name) if cond else fail(name, why or "condition not met")


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/definitions/"):
            raise ValueError(f"unsupported $ref {ref}")
        node = schema["definitions"][ref.rsplit("/", 1)[1]]
    return node


def loose_objects(schema: dict) -> list:
    """Paths of schema nodes that accept any key without saying so."""
    bad = []

    def walk(node, path):
        if isinstance(node, dict):
            is_object = node.get("type") == "object" or "properties" in node
            if is_object and "additionalProperties" not in node and path not in PASS_THROUGH:
                bad.append(path)
            if node.get("additionalProperties") is True:
                bad.append(path + " (additionalProperties: true)")
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
    walk(schema, "#")
    return bad


def merge(base, over):
    """Helm's coalescing of a values file over the chart's values (maps merge, the rest replaces)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(over)


def keyed_objects(schema: dict, node: dict, value, path=()):
    """(path, schema node) of every object in `value` that has fixed keys: all but typed maps
    (labels, resource lists) and the pass-through Kubernetes objects."""
    node = resolve(schema, node)
    if not isinstance(value, dict):
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                yield from keyed_objects(schema, node["items"], item, path + (i,))
        return
    passes = any(node is resolve(schema, {"$ref": r}) for r in PASS_THROUGH)
    if not passes and not isinstance(node.get("additionalProperties"), dict):
        yield path, node
    props = node.get("properties", {})
    for k, v in value.items():
        if k in props:
            yield from keyed_objects(schema, props[k], v, path + (k,))


def typo_of(keys) -> str:
    """A plausible misspelling of the object's first key (never one of its keys)."""
    first = sorted(keys)[0] if keys else "enabled"
    for cand in (first[:-1] if len(first) > 2 else first + "s", first + "s", first + "_typo"):
        if cand not in keys:
            return cand
    return "typo"


def set_at(doc, path, key, value):
    node = doc
    for p in path:
        node = node[p]
    node[key] = value


def main() -> int:
    schema = json.loads((CHART / "values.schema.json").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        ok("values.schema.json is a valid draft-07 schema")
    except jsonschema.SchemaError as e:
        fail("values.schema.json is a valid draft-07 schema", str(e))
        return 1
    validator = jsonschema.Draft7Validator(schema)
    loose = loose_objects(schema)
    check("values.schema.json: every object lists its keys (additionalProperties false) or is a typed map",
          not loose, "objects that accept any key:\n" + "\n".join(loose))

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    sets = [("values.yaml", defaults)]
    sets += [(str(f.relative_to(ROOT)), merge(defaults, yaml.safe_load(f.read_text()) or {})) for f in VALUES_FILES]
    for label, values in sets:
        errors = sorted(validator.iter_errors(values), key=lambda e: list(e.path))
        check(f"schema: {label} validates", not errors,
              "\n".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:10]))

    for label, values in sets:
        objects = list(keyed_objects(schema, schema, values))
        missed = []
        for path, node in objects:
            doc = copy.deepcopy(values)
            key = typo_of(set(node.get("properties", {})) | set(_at(values, path)))
            set_at(doc, path, key, "x")
            errs = [e for e in validator.iter_errors(doc)
                    if tuple(e.path) == path and e.validator == "additionalProperties" and key in e.message]
            if not errs:
                missed.append(f"{'.'.join(map(str, path)) or '<root>'}.{key}")
        check(f"schema: a misspelt key is refused in each of the {len(objects)} objects of {label}",
              objects and not missed, "accepted: " + ", ".join(missed))
    return 1 if FAILED else 0


def _at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


if __name__ == "__main__":
    sys.exit(main())
