"""swarm's templates: the subset of Go's text/template that swarmkit's ``template`` package offers, with
Go's own output and error texts.

Two uses, as in swarmkit: a service's ``--hostname``, ``--env`` values and ``--mount`` source, target,
volume labels and driver options are expanded per task on its node (:func:`expand_container_spec`); a
templated secret or config (``--template-driver golang``) is expanded per task with ``env``, ``secret``
and ``config`` as extra functions (see shoal.agent.files). The API checks a service's templates at create
and update with swarmkit's placeholder task (:func:`check_container_spec`), so a bad one is a 400.

Supported actions: fields (``.Service.ID/.Name/.Labels``, ``.Node.ID/.Hostname``,
``.Node.Platform.OS/.Architecture``, ``.Task.ID/.Name/.Slot``, a label as ``.Service.Labels.key``),
``.``, string literals, ``index .Service.Labels "key"``, ``join "sep" a b...``, the payload functions,
``{{/* comments */}}`` and ``{{-``/``-}}`` trimming. Other Go builtins (``if``, ``printf``, pipes...)
are refused with a message that says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Getter = Callable[[str], str]


class TemplateError(Exception):
    """The template cannot be expanded (the message is Go's where Go has one)."""


class GoStruct(dict):
    """A struct of the template context: a dict of its fields, with its Go type for error messages;
    printed as Go prints a struct value (``{v1 v2}``)."""

    def __init__(self, type_name: str, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self.type_name = type_name


SERVICE_T = "struct { ID string; Name string; Labels map[string]string }"
NODE_T = "struct { ID string; Hostname string; Platform template.Platform }"
TASK_T = "struct { ID string; Name string; Slot string }"
CONTEXT_T = "*template.Context"
PAYLOAD_T = "*template.PayloadContext"


def context(task: dict, node: dict, name: str, root: str = CONTEXT_T) -> GoStruct:
    """swarmkit's ``NewContext`` for a task (``name``: the task's name, ``node``: the node's description,
    empty when unknown)."""
    ann = task.get("ServiceAnnotations") or {}
    platform = node.get("Platform") or {}
    return GoStruct(root, {
        "Service": GoStruct(SERVICE_T, {"ID": task.get("ServiceID", ""), "Name": ann.get("Name", ""),
                                        "Labels": ann.get("Labels")}),
        "Node": GoStruct(NODE_T, {"ID": task.get("NodeID", ""), "Hostname": node.get("Hostname", ""),
                                  "Platform": GoStruct("template.Platform", {
                                      "Architecture": platform.get("Architecture", ""),
                                      "OS": platform.get("OS", "")})}),
        "Task": GoStruct(TASK_T, {"ID": task.get("ID", ""), "Name": name,
                                  "Slot": str(task.get("Slot") or task.get("NodeID", ""))}),
    })


def go_string(value: Any) -> str:
    """A value as Go's fmt prints it with ``%v``."""
    if isinstance(value, GoStruct):
        return "{" + " ".join(go_string(v) for v in value.values()) + "}"
    if isinstance(value, dict) or value is None:  # a map: map[k1:v1 k2:v2], keys sorted
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in sorted((value or {}).items())) + "]"
    return str(value)


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# -- parsing ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(?P<field>(?:\.[A-Za-z_]\w*)+|\.)|(?P<string>"(?:[^"\\\n]|\\.)*"|`[^`]*`)'
                    r"|(?P<ident>[A-Za-z_]\w*)|(?P<other>\S+))")
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
_BUILTINS = {"and", "call", "html", "slice", "js", "len", "not", "or", "print", "printf", "println", "urlquery",
             "eq", "ge", "gt", "le", "lt", "ne", "if", "else", "end", "range", "with", "define", "template",
             "block", "break", "continue", "nil", "true", "false"}
_FUNCTIONS = {"index", "join"}


@dataclass(frozen=True)
class _Arg:
    kind: str  # field | string | dot
    text: str  # as written
    pos: int  # offset in the template (of the field node Go reports: a chain's second element)
    value: str = ""  # a string literal's value


@dataclass(frozen=True)
class _Action:
    func: str  # "" for a lone operand
    args: tuple[_Arg, ...]
    pos: int


def _line_col(text: str, pos: int) -> tuple[int, int]:
    before = text[:pos]
    nl = before.rfind("\n")
    return before.count("\n") + 1, pos if nl < 0 else pos - nl - 1


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return re.sub(r"\\(.)", lambda m: _GO_ESCAPES.get(m.group(1), m.group(1)), token[1:-1])


def _field_pos(token: str, start: int) -> int:
    """Go gives a field chain the position of its second element (the chain node's)."""
    second = token.find(".", 1)
    return start + (second if second > 0 else 0)


def _parse(text: str, functions: set[str]) -> Iterator[str | _Action]:
    """Literal text and actions, in order; Go's parse errors (raised before anything is executed)."""
    pos = 0
    pending_trim = False
    while True:
        start = text.find("{{", pos)
        literal = text[pos:] if start < 0 else text[pos:start]
        if pending_trim:
            literal = literal.lstrip()
        if start < 0:
            yield literal
            return
        inner = start + 2
        left_trim = text.startswith("- ", inner) or text.startswith("-\t", inner) or text.startswith("-\n", inner)
        if left_trim:
            literal = literal.rstrip()
            inner += 1
        yield literal
        end = text.find("}}", inner)
        if end < 0:
            raise TemplateError(f"template: expansion:{_line_col(text, start)[0]}: unclosed action")
        close = end
        pending_trim = end > inner and text[end - 1] == "-" and text[end - 2:end - 1].isspace()
        if pending_trim:
            close = end - 1
        pos = end + 2
        body = text[inner:close]
        if body.strip().startswith("/*"):
            if not body.strip().endswith("*/"):
                raise TemplateError(f"template: expansion:{_line_col(text, start)[0]}: unclosed comment")
            continue
        yield _action(text, body, inner, functions)


def _action(text: str, body: str, offset: int, functions: set[str]) -> _Action:
    tokens = [(m.lastgroup or "", m.group(m.lastgroup or 0), offset + m.start(m.lastgroup or 0))
              for m in _TOKEN.finditer(body) if m.lastgroup]
    line = _line_col(text, offset)[0]
    if not tokens:
        raise TemplateError(f"template: expansion:{line}: missing value for command")
    kind, first, first_pos = tokens[0]
    func = ""
    if kind == "ident":
        if first in _BUILTINS or any(k == "other" for k, _, _ in tokens):
            raise TemplateError(f"template: expansion:{line}: shoal cannot expand {{{{{body.strip()}}}}} "
                                "(supported: fields, index, join, env, secret, config)")
        if first not in functions:
            raise TemplateError(f'template: expansion:{line}: function "{first}" not defined')
        func, tokens = first, tokens[1:]
    args = []
    for kind, tok, at in tokens:
        if kind == "field":
            args.append(_Arg("dot" if tok == "." else "field", tok, _field_pos(tok, at)))
        elif kind == "string":
            args.append(_Arg("string", tok, at, _unquote(tok)))
        elif kind == "ident":
            if tok not in functions:
                raise TemplateError(f'template: expansion:{line}: function "{tok}" not defined')
            raise TemplateError(f"template: expansion:{line}: shoal cannot expand {{{{{body.strip()}}}}} "
                                "(a function call as an argument)")
        else:
            raise TemplateError(f"template: expansion:{line}: shoal cannot expand {{{{{body.strip()}}}}} "
                                "(supported: fields, index, join, env, secret, config)")
    if not func and len(args) > 1:
        raise TemplateError(f"template: expansion:{line}: can't give argument to non-function {args[0].text}")
    return _Action(func, tuple(args), first_pos)


# -- execution ---------------------------------------------------------------------------------------------

def _exec_error(text: str, pos: int, at: str, message: str) -> TemplateError:
    line, col = _line_col(text, pos)
    return TemplateError(f'template: expansion:{line}:{col}: executing "expansion" at <{at}>: {message}')


def _field(text: str, ctx: GoStruct, arg: _Arg) -> Any:
    if arg.kind == "dot":
        return ctx
    value: Any = ctx
    for name in arg.text[1:].split("."):
        if isinstance(value, GoStruct):
            if name not in value:
                raise _exec_error(text, arg.pos, arg.text, f"can't evaluate field {name} in type {value.type_name}")
            value = value[name]
        elif isinstance(value, dict) or value is None:  # map[string]string, missingkey=error
            if name not in (value or {}):
                raise _exec_error(text, arg.pos, arg.text, f"map has no entry for key {go_quote(name)}")
            value = value[name]
        else:
            raise _exec_error(text, arg.pos, arg.text, f"can't evaluate field {name} in type string")
    return value


def _value(text: str, ctx: GoStruct, arg: _Arg) -> Any:
    return arg.value if arg.kind == "string" else _field(text, ctx, arg)


def _call(text: str, ctx: GoStruct, action: _Action, getters: dict[str, Getter]) -> str:
    at = " ".join([action.func, *(a.text for a in action.args)])
    values = [_value(text, ctx, a) for a in action.args]
    try:
        if action.func == "index":
            if len(values) != 2 or not (isinstance(values[0], dict) or values[0] is None) \
                    or isinstance(values[0], GoStruct) or not isinstance(values[1], str):
                raise TemplateError("shoal supports index of a map with one string key")
            return go_string((values[0] or {}).get(values[1], ""))
        if action.func == "join":
            if not values or not all(isinstance(v, str) for v in values):
                raise TemplateError("join takes strings")
            return values[0].join(values[1:])
        if len(values) != 1 or not isinstance(values[0], str):
            raise TemplateError(f"wrong number of args for {action.func}: want 1 got {len(values)}")
        return getters[action.func](values[0])
    except TemplateError as e:
        raise _exec_error(text, action.pos, at, f"error calling {action.func}: {e}") from None


def expand(text: str, ctx: GoStruct, getters: dict[str, Getter] | None = None) -> str:
    """Expand ``text``; ``getters`` maps the extra functions (``env``, ``secret``, ``config`` of a payload)
    to look-up functions that raise :class:`TemplateError`."""
    getters = getters or {}
    parts = list(_parse(text, _FUNCTIONS | set(getters)))
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif part.func:
            out.append(_call(text, ctx, part, getters))
        else:
            out.append(go_string(_value(text, ctx, part.args[0])))
    return "".join(out)


# -- container specs -------------------------------------------------------------------------------------

def _expand_map(ctx: GoStruct, values: dict | None) -> dict | None:
    if not values:
        return values
    out = {}
    for k, v in values.items():
        try:
            out[k] = expand(v, ctx)
        except TemplateError as e:
            raise TemplateError(f"expanding map entry {go_quote(k)}={go_quote(v)}: {e}") from None
    return out


def _expand_mount(ctx: GoStruct, mount: dict) -> dict:
    m = dict(mount)
    for key, what in (("Source", "source"), ("Target", "target")):
        try:
            m[key] = expand(m.get(key) or "", ctx)
        except TemplateError as e:
            raise TemplateError(f"expanding mount {what} {go_quote(m.get(key) or '')}: {e}") from None
        if not m[key] and not mount.get(key):
            m.pop(key)
    vo = m.get("VolumeOptions")
    if vo:
        vo = m["VolumeOptions"] = dict(vo)
        try:
            vo["Labels"] = _expand_map(ctx, vo.get("Labels"))
        except TemplateError as e:
            raise TemplateError(f"expanding volume labels: {e}") from None
        if vo.get("DriverConfig"):
            dc = vo["DriverConfig"] = dict(vo["DriverConfig"])
            try:
                dc["Options"] = _expand_map(ctx, dc.get("Options"))
            except TemplateError as e:
                raise TemplateError(f"expanding volume driver config: {e}") from None
        for d in (vo, vo.get("DriverConfig") or {}):
            for key in ("Labels", "Options"):
                if key in d and d[key] is None:
                    d.pop(key)
    return m


def expand_container_spec(cs: dict, ctx: GoStruct) -> dict:
    """swarmkit's ``ExpandContainerSpec``: a copy of ``cs`` with its env values, mounts and hostname
    expanded; errors worded as Docker's (``expanding env failed: ...``)."""
    cs = dict(cs)
    env = []
    for value in cs.get("Env") or []:
        name, eq, raw = value.partition("=")
        if not eq:
            env.append(value)
            continue
        try:
            env.append(f"{name}={expand(raw, ctx)}")
        except TemplateError as e:
            raise TemplateError(f"expanding env failed: expanding env {go_quote(value)}: {e}") from None
    if cs.get("Env"):
        cs["Env"] = env
    if cs.get("Mounts"):
        try:
            cs["Mounts"] = [_expand_mount(ctx, m) for m in cs["Mounts"]]
        except TemplateError as e:
            raise TemplateError(f"expanding mounts failed: {e}") from None
    if cs.get("Hostname"):
        try:
            cs["Hostname"] = expand(cs["Hostname"], ctx)
        except TemplateError as e:
            raise TemplateError(f"expanding hostname failed: {e}") from None
    return cs


# swarmkit's controlapi checks a spec's templates with this placeholder task and node
_CHECK_TASK = {"ServiceID": "serviceid", "Slot": 1, "NodeID": "nodeid", "ServiceAnnotations": {"Name": "servicename"}}
_CHECK_NODE = {"Hostname": "nodeHostname", "Platform": {"OS": "os", "Architecture": "architecture"}}


def check_container_spec(cs: dict) -> None:
    """Expand ``cs`` for swarmkit's placeholder task (the API's check at create and update)."""
    expand_container_spec(cs, context(_CHECK_TASK, _CHECK_NODE, "taskname"))
