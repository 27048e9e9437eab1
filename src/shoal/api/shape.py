"""Answers in Docker's shape: the fields Docker always returns are there, even when empty.

Docker's daemon answers with Go's ``encoding/json``: a field without ``omitempty`` is written even at its
zero value (``TaskTemplate.ForceUpdate: 0``, ``Spec.Labels``, a secret reference's ``File``...). Shoal's
OpenAPI document names those fields in the schemas' ``x-always`` lists; :func:`complete` adds every one
that is missing, with the zero value of its type (``null`` for what Go writes as a nil pointer, map or
slice), recursively through the answer.
"""

from __future__ import annotations

import copy
from typing import Any

from shoal.api.openapi import document


def complete(obj: Any, schema: str) -> Any:
    """A copy of ``obj`` with the always-present fields of ``components/schemas/<schema>``."""
    return _complete(copy.deepcopy(obj), {"$ref": f"#/components/schemas/{schema}"})


def _resolve(spec: dict) -> dict:
    while "$ref" in spec:
        spec = document()["components"]["schemas"][spec["$ref"].rsplit("/", 1)[1]]
    if "allOf" in spec:
        merged: dict = {"properties": {}, "x-always": []}
        for part in spec["allOf"]:
            part = _resolve(part)
            merged["properties"].update(part.get("properties") or {})
            merged["x-always"] += part.get("x-always") or []
        return merged
    return spec


def _zero(spec: dict) -> Any:
    """Go's zero value as written: a struct is an object of its own always-present fields; ``default``
    says where that differs (``null`` for a nil pointer, ``{}`` for labels)."""
    if "default" in spec:
        return copy.deepcopy(spec["default"])
    spec = _resolve(spec)
    if "default" in spec:
        return copy.deepcopy(spec["default"])
    t = spec.get("type")
    types = [t] if isinstance(t, str) else list(t or [])
    if "object" in types and "properties" in spec:
        return _complete({}, spec)
    if not types or "null" in types or "array" in types:
        return None
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "object": {}}[types[0]]


def _complete(obj: Any, spec: dict) -> Any:
    spec = _resolve(spec)
    if isinstance(obj, dict):
        props = spec.get("properties") or {}
        for key in spec.get("x-always") or ():
            if key not in obj:
                obj[key] = _zero(props[key])
        for key, value in obj.items():
            if key in props:
                _complete(value, props[key])
    elif isinstance(obj, list) and "items" in spec:
        for item in obj:
            _complete(item, spec["items"])
    return obj
