"""Swarm placement constraints (after swarmkit ``manager/constraint/constraint.go``).

A constraint is ``key==value`` or ``key!=value`` (spaces around the operator are allowed). Keys:
``node.id``, ``node.hostname``, ``node.role``, ``node.ip`` (address or CIDR), ``node.platform.os``,
``node.platform.arch``, ``node.labels.<label>`` and ``engine.labels.<label>``. Keys and values compare
case-insensitively; only the label *name* after the prefix is case-sensitive. A missing attribute or
label equals the empty string, so ``node.labels.x!=y`` matches nodes without label ``x``. A syntactically
valid but unknown key matches no node. :func:`parse` raises :class:`ValueError` with swarmkit's messages,
which the API returns for an invalid service spec.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

EQ = 0
NOTEQ = 1
OPERATORS = ("==", "!=")
NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."

_KEY_RE = re.compile(r"[a-z_][a-z0-9\-_.]+", re.IGNORECASE | re.ASCII)
_VALUE_RE = re.compile(r"[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+", re.IGNORECASE | re.ASCII)
_SIMPLE_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")


@dataclass(frozen=True, slots=True)
class NodeAttributes:
    """The values constraints look at, pre-lowercased (built once per node update)."""

    values: dict[str, str]
    node_labels: dict[str, str]
    engine_labels: dict[str, str]
    addr: str = ""

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> NodeAttributes:
        spec = node.get("Spec") or {}
        desc = node.get("Description") or {}
        plat = desc.get("Platform") or {}
        values = {
            "node.id": node.get("ID") or "",
            "node.hostname": desc.get("Hostname") or "",
            "node.role": spec.get("Role") or "worker",
            "node.platform.os": plat.get("OS") or "",
            "node.platform.arch": plat.get("Architecture") or "",
        }
        return cls(
            values={k: v.lower() for k, v in values.items()},
            node_labels={k: str(v).lower() for k, v in (spec.get("Labels") or {}).items()},
            engine_labels={
                k: str(v).lower() for k, v in ((desc.get("Engine") or {}).get("Labels") or {}).items()
            },
            addr=(node.get("Status") or {}).get("Addr") or "",
        )


@dataclass(frozen=True, slots=True)
class Constraint:
    """One parsed ``key op value`` expression."""

    key: str
    operator: int
    exp: str
    _kind: str = field(init=False, repr=False, compare=False)
    _arg: str = field(init=False, repr=False, compare=False)
    _exp: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        low = self.key.lower()
        if low in _SIMPLE_KEYS:
            kind, arg = "simple", low
        elif low == "node.ip":
            kind, arg = "ip", ""
        elif len(low) > len(NODE_LABEL_PREFIX) and low.startswith(NODE_LABEL_PREFIX):
            kind, arg = "node_label", self.key[len(NODE_LABEL_PREFIX) :]
        elif len(low) > len(ENGINE_LABEL_PREFIX) and low.startswith(ENGINE_LABEL_PREFIX):
            kind, arg = "engine_label", self.key[len(ENGINE_LABEL_PREFIX) :]
        else:
            kind, arg = "unknown", ""
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_arg", arg)
        object.__setattr__(self, "_exp", self.exp.lower())

    def __str__(self) -> str:
        return f"{self.key}{OPERATORS[self.operator]}{self.exp}"

    def match(self, *whats: str) -> bool:
        """Case-insensitive full-string match of any of ``whats``, negated for ``!=``."""
        found = any(self._exp == w.lower() for w in whats)
        return found if self.operator == EQ else not found

    def matches(self, attrs: NodeAttributes) -> bool:
        """True if a node with these attributes satisfies the constraint."""
        kind = self._kind
        if kind == "simple":
            value = attrs.values[self._arg]
        elif kind == "node_label":
            value = attrs.node_labels.get(self._arg, "")
        elif kind == "engine_label":
            value = attrs.engine_labels.get(self._arg, "")
        elif kind == "ip":
            return self._match_ip(attrs.addr)
        else:
            return False
        return (value == self._exp) == (self.operator == EQ)

    def _match_ip(self, addr: str) -> bool:
        try:
            node_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(addr)
        except ValueError:
            node_ip = None
        try:
            hit = node_ip == ipaddress.ip_address(self.exp)
        except ValueError:
            try:
                net = ipaddress.ip_network(self.exp, strict=False)
            except ValueError:
                return False  # malformed address/network never matches
            hit = node_ip is not None and node_ip.version == net.version and node_ip in net
        return hit == (self.operator == EQ)


def parse(exprs: list[str] | tuple[str, ...]) -> list[Constraint]:
    """Parse constraint expressions; raise :class:`ValueError` (swarmkit's message) on bad syntax."""
    return list(_parse_cached(tuple(exprs)))


@lru_cache(maxsize=1024)
def _parse_cached(exprs: tuple[str, ...]) -> tuple[Constraint, ...]:
    out: list[Constraint] = []
    for e in exprs:
        for op_index, op in enumerate(OPERATORS):
            if op not in e:
                continue
            raw_key, raw_value = e.split(op, 1)
            key = raw_key.strip()
            if not _KEY_RE.fullmatch(key):
                raise ValueError(f"key '{key}' is invalid")
            value = raw_value.strip()
            if not _VALUE_RE.fullmatch(value):
                raise ValueError(f"value '{value}' is invalid")
            out.append(Constraint(key, op_index, value))
            break
        else:
            raise ValueError(f"constraint expected one operator from {', '.join(OPERATORS)}")
    return tuple(out)


def validate(exprs: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`ValueError` if any expression is invalid (for API spec validation)."""
    parse(exprs)


def node_matches(constraints: list[Constraint] | tuple[Constraint, ...], node: dict[str, Any]) -> bool:
    """True if a Node dict satisfies all constraints."""
    return attrs_match(constraints, NodeAttributes.from_node(node))


def attrs_match(constraints: list[Constraint] | tuple[Constraint, ...], attrs: NodeAttributes) -> bool:
    """True if node attributes satisfy all constraints."""
    return all(c.matches(attrs) for c in constraints)
