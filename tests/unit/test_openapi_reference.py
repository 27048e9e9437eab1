"""shoal's OpenAPI document (src/shoal/api/openapi.yaml) against facts from moby's Engine API v1.50
(tests/data/moby-api-v1.50/extract.json): property names, types, formats, enums, status codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from shoal.api.openapi import document

EXTRACT = json.loads((Path(__file__).parents[1] / "data" / "moby-api-v1.50" / "extract.json").read_text())
MOBY = EXTRACT["definitions"]

# What shoal documents beyond moby's v1.50 definitions, because Docker's daemon answers with it.
EXTRA_PROPERTIES = {
    "Service": {"PreviousSpec"},  # swarm.Service has it; the swagger definition omits it
    "Task": {"GenericResources"},  # swarm.Task's JSON name for what the swagger calls AssignedGenericResources
}
EXTRA_ENUM = {
    # swarm.UpdateState has the rollback states too
    ("Service", "UpdateStatus.State"): {"rollback_started", "rollback_paused", "rollback_completed"},
}
EXTRA_STATUS = {  # status codes Docker's daemon gives that the swagger does not list
    "POST /services/create": {"404", "501"},
    "POST /services/{id}/update": {"409", "501"},
    "DELETE /services/{id}": {"400"},
    "GET /services/{id}": {"400"},  # an ambiguous ID prefix (moby: InvalidParameter)
    "DELETE /nodes/{id}": {"400"},
    "GET /nodes": {"400"}, "GET /services": {"400"}, "GET /tasks": {"400", "404"}, "GET /networks": {"400"},
    "DELETE /networks/{id}": {"400", "409"},
    "GET /networks/{id}": {"400"},
    "POST /networks/create": {"409", "503"},
    "POST /swarm/unlock": {"400", "401", "409"},
    "GET /distribution/{name}/json": {"400", "403", "404"},
}
INT_FORMATS = {"int64", "uint64", "uint32"}
# Where the swagger's name is not the JSON name of moby's Go type, which is what dockerd decodes (case-
# insensitively) and answers with: shoal documents (and decodes to) the Go type's name.
GO_NAMES = {"HealthCheck": "Healthcheck"}  # swarm.ContainerSpec.Healthcheck


def ours(schema: dict) -> dict:
    """Follow $ref and merge allOf in shoal's document."""
    while "$ref" in schema:
        schema = document()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema:
        merged: dict = {"properties": {}}
        for part in schema["allOf"]:
            merged["properties"].update(ours(part).get("properties", {}))
        return merged
    return schema


def theirs(facts: dict) -> dict:
    if "ref" in facts:
        return MOBY.get(facts["ref"], {})
    if "allOf" in facts:
        merged: dict = {"properties": {}}
        for part in facts["allOf"]:
            merged["properties"].update(theirs(part).get("properties", {}))
        return merged
    return facts


def compare(name: str, where: str, moby: dict, mine: dict, problems: list[str], depth: int = 0) -> None:
    moby, mine = theirs(moby), ours(mine)
    if depth > 6:
        return
    label = f"{name}{'.' + where if where else ''}"
    if "type" in moby:
        types = mine.get("type")
        types = [types] if isinstance(types, str) else (types or [])
        if types and moby["type"] not in types:
            problems.append(f"{label}: type {types} where moby has {moby['type']}")
    if moby.get("format") in INT_FORMATS and mine.get("format") != moby["format"]:
        problems.append(f"{label}: format {mine.get('format')} where moby has {moby['format']}")
    if "enum" in moby:
        missing = set(moby["enum"]) - set(mine.get("enum", []))
        extra = set(mine.get("enum", [])) - set(moby["enum"]) - EXTRA_ENUM.get((name, where), set())
        if missing or extra:
            problems.append(f"{label}: enum misses {sorted(missing)}, adds {sorted(extra)}")
    props = {GO_NAMES.get(k, k): v for k, v in (moby.get("properties") or {}).items()}
    if props:
        mine_props = mine.get("properties") or {}
        missing = set(props) - set(mine_props)
        extra = set(mine_props) - set(props) - (EXTRA_PROPERTIES.get(name, set()) if not where else set())
        if missing or extra:
            problems.append(f"{label}: properties missing {sorted(missing)}, extra {sorted(extra)}")
        for key in sorted(set(props) & set(mine_props)):
            compare(name, f"{where}.{key}" if where else key, props[key], mine_props[key], problems, depth + 1)
    if "items" in moby and "items" in mine:
        compare(name, f"{where}[]", moby["items"], mine["items"], problems, depth + 1)
    if "additionalProperties" in moby and isinstance(mine.get("additionalProperties"), dict):
        compare(name, f"{where}{{}}", moby["additionalProperties"], mine["additionalProperties"], problems, depth + 1)


@pytest.mark.parametrize("name", sorted(MOBY))
def test_definition_matches_moby(name):
    mine = document()["components"]["schemas"].get(name)
    assert mine is not None, f"shoal's document has no schema {name}"
    problems: list[str] = []
    compare(name, "", MOBY[name], mine, problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("op", sorted(EXTRACT["paths"]))
def test_operation_status_codes_match_moby(op):
    method, path = op.split(" ", 1)
    mine = document()["paths"].get(path, {}).get(method.lower())
    assert mine is not None, f"shoal's document lacks {op}"
    codes = set(mine["responses"])
    moby = set(EXTRACT["paths"][op])
    assert moby <= codes, f"{op}: moby documents {sorted(moby - codes)} too"
    assert codes - moby <= EXTRA_STATUS.get(op, set()), f"{op}: undocumented extra codes {sorted(codes - moby)}"


def test_document_is_valid_openapi_31():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    ops = [(p, m) for p, item in doc["paths"].items() for m in item if m != "parameters"]
    assert len({doc["paths"][p][m]["operationId"] for p, m in ops}) == len(ops), "operationIds are unique"
