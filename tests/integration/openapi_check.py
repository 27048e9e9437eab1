"""Check recorded API answers against shoal's OpenAPI document (src/shoal/api/openapi.yaml)."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from shoal.api.openapi import document

URI = "urn:shoal:openapi"
_VERSION = re.compile(r"^/v\d+\.\d+(/.*)$")


@functools.cache
def _templates() -> list[tuple[re.Pattern, str]]:
    out = []
    for tpl in document()["paths"]:
        rx = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(tpl)) + "$")
        out.append((rx, tpl))
    # literal paths before templated ones: /services/create is not /services/{id}
    out.sort(key=lambda p: p[1].count("{"))
    return out


def operation(method: str, path: str) -> tuple[str, dict] | None:
    """The documented (template, operation) answering ``method path``, or None."""
    m = _VERSION.match(path)
    if m:
        path = m.group(1)
    method = method.lower()
    for rx, tpl in _templates():
        if rx.match(path):
            op = document()["paths"][tpl].get(method)
            if op is not None:
                return tpl, op
    return None


@functools.cache
def answers_document() -> dict:
    """The document as answers are checked against it: the fields Docker always returns (``x-always``,
    which shoal's api/shape.py adds) are required."""
    doc = copy.deepcopy(document())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "x-always" in node:
                node["required"] = sorted(set(node.get("required") or ()) | set(node["x-always"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return doc


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(URI, Resource.from_contents(answers_document(),
                                                                default_specification=DRAFT202012))


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{URI}#{pointer}"}, registry=_registry())


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def check(method: str, path: str, status: int, body: Any) -> list[str]:
    """Problems of one JSON answer (an empty list when it matches the document or is not documented)."""
    found = operation(method, path)
    if found is None:
        return []
    tpl, op = found
    responses = op["responses"]
    key = str(status)
    if key not in responses:
        return [f"{method} {path}: status {status} is not documented for {tpl} (body {str(body)[:200]})"]
    resp = responses[key]
    ptr = f"/paths/{_escape(tpl)}/{method.lower()}/responses/{key}"
    if "$ref" in resp:
        ptr = resp["$ref"][1:]
        resp = document()["components"]["responses"][ptr.rsplit("/", 1)[1]]
    if "application/json" not in (resp.get("content") or {}):
        return []
    errors = sorted(_validator(f"{ptr}/content/application~1json/schema").iter_errors(body), key=str)
    return [f"{method} {path} → {status}: {'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in errors[:5]]


def check_record(file: Path) -> list[str]:
    """Problems of every answer recorded by a shoald started with ``SHOAL_API_RECORD=file``."""
    problems: list[str] = []
    if not file.exists():
        return problems
    for line in file.read_text().splitlines():
        rec = json.loads(line)
        try:
            body = json.loads(rec["body"]) if rec["body"] else None
        except ValueError:
            problems.append(f"{rec['method']} {rec['path']}: answer is not JSON: {rec['body'][:200]}")
            continue
        problems += check(rec["method"], rec["path"], rec["status"], body)
    return sorted(set(problems))
