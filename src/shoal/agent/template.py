"""Templated secrets and configs (``--template-driver golang``): the subset of Go's text/template that
swarm's placeholders use, expanded per task as swarmkit's agent does.

Supported actions: ``{{ .Service.ID }}``, ``.Service.Name``, ``.Service.Labels``, ``.Node.ID``,
``.Node.Hostname``, ``.Node.Platform.OS`` / ``.Architecture`` (empty, as Docker's executor passes templates no
node description), ``.Task.ID``, ``.Task.Name``, ``.Task.Slot``;
``{{ index .Service.Labels "key" }}``; ``{{ env "VAR" }}`` (the task's environment); ``{{ secret "target" }}``
and ``{{ config "target" }}`` (another file of the same task, by its target name); ``{{/* comments */}}``
and ``{{-``/``-}}`` trimming. Anything else is refused with a message, and the task is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_FIELD = re.compile(r"\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_CALL = re.compile(r'(env|secret|config)\s+"((?:[^"\\]|\\.)*)"')
_INDEX = re.compile(r'index\s+\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s+"((?:[^"\\]|\\.)*)"')


class TemplateError(Exception):
    """The template cannot be expanded."""


def context(task: dict, node: dict, name: str) -> dict[str, Any]:
    """swarmkit's template context for a task (``name``: the task's container name)."""
    ann = task.get("ServiceAnnotations") or {}
    platform = node.get("Platform") or {}
    return {
        "Service": {"ID": task.get("ServiceID", ""), "Name": ann.get("Name", ""), "Labels": ann.get("Labels") or {}},
        "Node": {"ID": task.get("NodeID", ""), "Hostname": node.get("Hostname", ""),
                 "Platform": {"Architecture": platform.get("Architecture", ""), "OS": platform.get("OS", "")}},
        "Task": {"ID": task["ID"], "Name": name, "Slot": str(task.get("Slot") or task.get("NodeID", ""))},
    }


def _go_string(value: Any) -> str:
    if isinstance(value, dict):  # Go prints a map as map[k1:v1 k2:v2], keys sorted
        return "map[" + " ".join(f"{k}:{_go_string(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _field(ctx: dict, path: str) -> Any:
    value: Any = ctx
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"template: expansion: can't evaluate field {part}")
        value = value[part]
    return value


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def expand(text: str, ctx: dict, getters: dict[str, Callable[[str], str]]) -> str:
    """Expand ``text``; ``getters`` maps ``env``, ``secret`` and ``config`` to look-up functions."""
    out: list[str] = []
    pos = 0
    for m in _ACTION.finditer(text):
        literal = text[pos:m.start()]
        if m.group(1):
            literal = literal.rstrip()
        out.append(literal)
        pos = m.end()
        if m.group(3):  # "-}}": trim the white space that follows
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
        action = m.group(2).strip()
        if action.startswith("/*") and action.endswith("*/"):
            continue
        if fm := _FIELD.fullmatch(action):
            out.append(_go_string(_field(ctx, fm.group(1))))
        elif cm := _CALL.fullmatch(action):
            out.append(getters[cm.group(1)](_unquote(cm.group(2))))
        elif im := _INDEX.fullmatch(action):
            mapping = _field(ctx, im.group(1))
            if not isinstance(mapping, dict):
                raise TemplateError(f"template: expansion: can't index item of type {type(mapping).__name__}")
            out.append(_go_string(mapping.get(_unquote(im.group(2)), "")))
        else:
            raise TemplateError(f"template: expansion: shoal cannot expand {{{{{m.group(2).strip()}}}}} "
                                "(supported: .Service/.Node/.Task fields, index, env, secret, config)")
    out.append(text[pos:])
    return "".join(out)
