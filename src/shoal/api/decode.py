"""Request bodies decoded as Docker's daemon decodes them: Go's ``encoding/json`` into moby's types.

One decoder for every swarm body shoal reads, driven by the body's schema in shoal's OpenAPI document
(``openapi.yaml``, whose schemas carry moby's v1.50 names):

- a key names a field case-insensitively, an exact match first (``{"order": ...}`` is ``Order``); a key
  the schema does not know is dropped, and so is ``null`` (Go leaves the field unset);
- a key given twice in different cases: the later one wins, objects merge (Go decodes into the same field);
- a value of the wrong JSON type is a 400 with Go's message (``invalid JSON: json: cannot unmarshal
  number -1 into Go struct field ReplicatedService.Mode.Replicated.Replicas of type uint64``); integers
  must fit their Go type; maps keep their keys; objects, arrays and map values are decoded recursively.

The result is canonical: every key spelled as Docker spells it, nothing Docker would not know. A
schema's Go type comes from ``x-go-type`` when it has one, else from its JSON type and format (objects:
``swarm.<name>``); it only shapes the messages and the integer ranges.
"""

from __future__ import annotations

from typing import Any

from shoal.api.openapi import document
from shoal.model.errors import BadRequest

_RANGES = {
    "int": (-(2**63), 2**63 - 1), "int64": (-(2**63), 2**63 - 1), "time.Duration": (-(2**63), 2**63 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint64": (0, 2**64 - 1), "uint32": (0, 2**32 - 1),
    "os.FileMode": (0, 2**32 - 1), "uint16": (0, 2**16 - 1), "uint8": (0, 2**8 - 1),
}
_ZERO = {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}


def decode(body: Any, schema: str) -> Any:
    """``body`` (parsed JSON; None for an empty body) as Go would decode it into the type of
    ``components/schemas/<schema>``; raises :class:`BadRequest` with Go's message."""
    spec = _schema(schema)
    if body is None:
        return {} if "object" in _types(spec) else None
    if "object" in _types(spec) and not isinstance(body, dict):
        raise BadRequest(f"invalid JSON: json: cannot unmarshal {_kind(body)} into Go value of type "
                         f"{_go_type(spec, schema)}")
    return _Decoder().value(body, spec, schema)


def _schema(name: str) -> dict:
    return document()["components"]["schemas"][name]


def _resolve(spec: dict) -> tuple[dict, str | None]:
    """The schema behind ``$ref`` (and the component's name), with ``allOf`` parts merged."""
    name = None
    while "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[1]
        spec = _schema(name)
    if "allOf" in spec:
        merged: dict = {"type": "object", "properties": {}}
        for part in spec["allOf"]:
            merged["properties"].update(_resolve(part)[0].get("properties") or {})
        spec = {**merged, **{k: v for k, v in spec.items() if k != "allOf"}}
    return spec, name


def _types(spec: dict) -> set[str]:
    t = _resolve(spec)[0].get("type")
    return ({t} if isinstance(t, str) else set(t or ())) - {"null"}


def _kind(value: Any) -> str:
    """How Go names a JSON value in its messages."""
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "array", str: "string"}.get(type(value), "number")


def _go_type(spec: dict, hint: str) -> str:
    if "x-go-type" in spec:  # beside a $ref too
        return spec["x-go-type"]
    spec, name = _resolve(spec)
    if "x-go-type" in spec:
        return spec["x-go-type"]
    types = _types(spec)
    if "array" in types:
        return "[]" + _go_type(spec.get("items") or {}, hint)
    if "object" in types:
        extra = spec.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in spec:
            return "map[string]" + _go_type(extra, hint)
        return f"swarm.{name or hint}"
    if "integer" in types:
        return spec.get("format") or "int"
    if "number" in types:
        return "float64"
    if "boolean" in types:
        return "bool"
    return "string" if "string" in types else "interface {}"


class _Decoder:
    """One decoding: the struct and field path it is in, for Go's messages."""

    def __init__(self) -> None:
        self.struct = ""
        self.path: list[str] = []

    def fail(self, value: Any, go_type: str, literal: bool = False) -> BadRequest:
        what = f"number {value!r}" if literal else _kind(value)
        return BadRequest(f"invalid JSON: json: cannot unmarshal {what} into Go struct field "
                          f"{self.struct}.{'.'.join(self.path)} of type {go_type}")

    def value(self, value: Any, spec: dict, hint: str) -> Any:
        go_type = _go_type(spec, hint)
        spec, name = _resolve(spec)
        hint = name or hint
        types = _types(spec)
        if "object" in types and isinstance(value, dict):
            extra = spec.get("additionalProperties")
            if "properties" not in spec and isinstance(extra, dict):
                return {k: self.item(v, extra, hint) for k, v in value.items()}
            return self.struct_(value, spec.get("properties") or {}, go_type)
        if "array" in types and isinstance(value, list):
            return [self.item(v, spec.get("items") or {}, hint) for v in value]
        if "string" in types and isinstance(value, str):
            return value
        if "boolean" in types and isinstance(value, bool):
            return value
        if "integer" in types and isinstance(value, int | float) and not isinstance(value, bool):
            low, high = _RANGES.get(go_type, _RANGES["int64"])
            if isinstance(value, float) or not low <= value <= high:
                raise self.fail(value, go_type, literal=True)
            return value
        if "number" in types and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if not types:  # any JSON value
            return value
        raise self.fail(value, go_type)

    def item(self, value: Any, spec: dict, hint: str) -> Any:
        """An array element or map value: null is the type's zero value there."""
        if value is None:
            return _ZERO.get(next(iter(sorted(_types(spec))), ""), None)
        return self.value(value, spec, hint)

    def struct_(self, value: dict, props: dict, go_type: str) -> dict:
        by_fold = {}
        for key in props:
            by_fold.setdefault(key.casefold(), key)
        outer = self.struct
        self.struct = go_type.rsplit(".", 1)[-1].lstrip("*")
        out: dict = {}
        for key, raw in value.items():
            field = key if key in props else by_fold.get(key.casefold())
            if field is None or raw is None:
                continue
            self.path.append(field)
            decoded = self.value(raw, props[field], field)
            self.path.pop()
            self.struct = go_type.rsplit(".", 1)[-1].lstrip("*")
            out[field] = _merge(out[field], decoded) if field in out else decoded
        self.struct = outer
        return out


def _merge(old: Any, new: Any) -> Any:
    """A field given twice: Go decodes the second into what the first made (objects merge)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merge(old[k], v) if k in old else v for k, v in new.items()}}
    return new
