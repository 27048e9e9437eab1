"""Every field of a ServiceSpec (TaskSpec, ContainerSpec, EndpointSpec and what they refer to) is honoured
or refused, never silently ignored: each is named by the ``field`` marker of a test that shows it.

Fields are walked in moby's v1.50 definitions (tests/data/moby-api-v1.50/extract.json). A field's path
starts at the definition that holds it and goes through properties; a ``$ref`` is named by its own
definition and array items are transparent: ``TaskSpec.ContainerSpec.Mounts`` is a field (it refers to
Mount), ``Mount.BindOptions.Propagation`` another. The markers are read from the test files with ``ast``,
so integration and lab tests count without running them::

    @pytest.mark.field("TaskSpec.ContainerSpec.Groups", "Limit.Pids", how="honoured")

``how="honoured"``: the test asserts the field's effect a user sees; ``how="refused"``: it asserts the 400
and that nothing changed. A refused object refuses everything in it. docs/compat-fields.md is made from
the markers; after changing them run ``PYTHONPATH=src .venv/bin/python tests/unit/test_field_coverage.py``.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = json.loads((ROOT / "tests/data/moby-api-v1.50/extract.json").read_text())["definitions"]
STARTS = ("ServiceSpec", "TaskSpec", "EndpointSpec")
DOC = ROOT / "docs/compat-fields.md"
HOW = ("honoured", "refused")

@dataclass
class Marker:
    test: str  # tests/<dir>/<file>.py::<function>
    paths: list[str]
    how: str


@dataclass
class Field:
    path: str
    leaf: bool  # a value, a map or an empty object, or a reference to a definition
    tests: dict[str, list[str]] = field(default_factory=lambda: {h: [] for h in HOW})


def walk_fields() -> dict[str, Field]:
    """Every field reachable from STARTS, in walk order."""
    out: dict[str, Field] = {}
    done: set[str] = set()

    def definition(name: str) -> None:
        if name in done or name not in DEFINITIONS:
            return
        done.add(name)
        props(name, DEFINITIONS[name])

    def props(prefix: str, schema: dict) -> None:
        for key, sub in (schema.get("properties") or {}).items():
            one(f"{prefix}.{key}", sub)

    def one(path: str, schema: dict) -> None:
        while schema.get("type") == "array" and "items" in schema:
            schema = schema["items"]
        if "ref" in schema:
            out[path] = Field(path, leaf=True)
            definition(schema["ref"])
        elif schema.get("properties"):
            out[path] = Field(path, leaf=False)
            props(path, schema)
        else:
            out[path] = Field(path, leaf=True)

    for name in STARTS:
        definition(name)
    return out


def _is_field_marker(node: ast.AST) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Attribute) and f.attr == "field" and isinstance(f.value, ast.Attribute)
            and f.value.attr == "mark")


def _markers_in(node: ast.AST, test: str, problems: list[str]) -> list[Marker]:
    found = []
    for call in (n for n in ast.walk(node) if _is_field_marker(n)):
        assert isinstance(call, ast.Call)
        paths = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        how = next((k.value.value for k in call.keywords if k.arg == "how" and isinstance(k.value, ast.Constant)),
                   None)
        if len(paths) != len(call.args) or not paths or how not in HOW:
            problems.append(f"{test}: line {call.lineno}: a field marker takes literal paths and how="
                            f"'honoured' or 'refused'")
            continue
        found.append(Marker(test, paths, how))
    return found


def _decorator_markers(deco: ast.AST, test: str, named: dict[str, ast.AST], problems: list[str]) -> list[Marker]:
    found = _markers_in(deco, test, problems)
    for name in {n.id for n in ast.walk(deco) if isinstance(n, ast.Name) and n.id in named}:
        found += _markers_in(named[name], test, problems)
    return found


def collect_markers(problems: list[str]) -> list[Marker]:
    """The field markers of every test under tests/: on test functions (their parameters too, also when
    the parameters are a module-level list the decorator names), on classes, and in ``pytestmark``."""
    out = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        named = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name) and t.id != "pytestmark"}
        of = functools.partial(_decorator_markers, named=named, problems=problems)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                    for t in node.targets):
                out += _markers_in(node.value, rel, problems)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for deco in node.decorator_list:
                    out += of(deco, f"{rel}::{node.name}")
                if isinstance(node, ast.ClassDef):
                    for sub in node.body:
                        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                            for deco in sub.decorator_list:
                                out += of(deco, f"{rel}::{node.name}::{sub.name}")
    return out


@functools.cache
def coverage() -> tuple[dict[str, Field], list[str]]:
    """The fields with the tests that show them, and what is wrong (unknown paths, bad markers,
    uncovered fields)."""
    problems: list[str] = []
    fields = walk_fields()
    for m in collect_markers(problems):
        for path in m.paths:
            f = fields.get(path)
            if f is None:
                problems.append(f"{m.test}: no field {path!r} in moby's v1.50 definitions (see this test's docstring)")
            elif m.how == "honoured" and not f.leaf:
                problems.append(f"{m.test}: {path} is an object: mark the fields in it that the test shows")
            else:
                f.tests[m.how].append(m.test)
    for f in fields.values():
        refused_above = any(fields[a].tests["refused"] for a in _ancestors(f.path) if a in fields)
        if f.leaf and not (f.tests["honoured"] or f.tests["refused"] or refused_above):
            problems.append(f"{f.path}: neither honoured nor refused by any marked test")
    return fields, problems


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def render(fields: dict[str, Field]) -> str:
    lines = [
        "# Engine API fields: honoured or refused",
        "",
        "Every field of a `ServiceSpec` (with `TaskSpec`, `ContainerSpec`, `EndpointSpec` and the definitions they",
        "refer to, as moby's Engine API v1.50 names them) is either **honoured** — a test shows its effect a user",
        "sees — or **refused** with a 400 in Docker's shape, and a test shows the 400 and that nothing changed.",
        "Shoal never stores a field and ignores it. The list is made by `tests/unit/test_field_coverage.py` from",
        "the `@pytest.mark.field(<path>..., how=...)` markers of the tests; do not edit it by hand: after changing",
        "markers run `PYTHONPATH=src .venv/bin/python tests/unit/test_field_coverage.py`.",
        "",
        "A path starts at the definition holding the field; a reference to another definition (`Mount`, `Limit`,",
        "`NetworkAttachmentConfig`...) is a field of its own and its fields start at that definition's name.",
        "A refused object refuses everything in it. *pending* fields are being made honoured (issue 11).",
        "",
        "| field | shoal | shown by |",
        "|---|---|---|",
    ]
    for f in fields.values():
        if not f.leaf and not (f.tests["refused"]):
            continue
        hows = [h for h in HOW if f.tests[h]]
        if not hows:
            refused = [a for a in _ancestors(f.path) if a in fields and fields[a].tests["refused"]]
            how, tests = (f"refused (with `{refused[0]}`)", []) if refused else ("", [])
        else:
            how, tests = ", ".join(hows), sorted({t for h in hows for t in f.tests[h]})
        lines.append(f"| `{f.path}` | {how} | {'<br>'.join(f'`{t}`' for t in tests)} |")
    return "\n".join(lines) + "\n"


def test_every_field_is_honoured_or_refused():
    _, problems = coverage()
    assert not problems, "\n".join(problems)


def test_compat_fields_doc_is_current():
    fields, _ = coverage()
    assert DOC.exists() and DOC.read_text() == render(fields), (
        "docs/compat-fields.md is stale: run PYTHONPATH=src .venv/bin/python tests/unit/test_field_coverage.py")


if __name__ == "__main__":
    found, trouble = coverage()
    DOC.write_text(render(found))
    print(f"wrote {DOC.relative_to(ROOT)}: {sum(f.leaf for f in found.values())} fields", file=sys.stderr)
    for p in trouble:
        print(p, file=sys.stderr)
