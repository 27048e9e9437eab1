"""Find an object by full ID, then exact name, then unique ID prefix — as Docker does."""

from __future__ import annotations

from shoal.control import Objects
from shoal.model.errors import BadRequest, NotFound
from shoal.model.kinds import SINGULAR, name_of


def _names(kind: str, obj: dict) -> tuple[str, ...]:
    if kind == "nodes":
        return ((obj.get("Spec") or {}).get("Name") or "", (obj.get("Description") or {}).get("Hostname") or "")
    return (name_of(kind, obj) or "",)


def resolve(objs: Objects, kind: str, ref: str) -> dict:
    obj = objs.get(kind, ref)
    if obj is not None:
        return obj
    everything = objs.list(kind)
    by_name = [o for o in everything if ref and ref in _names(kind, o)]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise BadRequest(f"{SINGULAR[kind]} {ref} is ambiguous ({len(by_name)} matches found)")
    by_prefix = [o for o in everything if ref and o["ID"].startswith(ref)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise BadRequest(f"{SINGULAR[kind]} {ref} is ambiguous ({len(by_prefix)} matches found)")
    raise NotFound(f"{SINGULAR[kind]} {ref} not found")
