"""The kinds of stored objects and how the API names them."""

from __future__ import annotations

KINDS = ("clusters", "nodes", "services", "tasks", "networks", "secrets", "configs",
         "netkeys", "nodekeys")  # the encrypted overlays' keys: never shown by the API
# kinds whose names are unique (kept so by the store): their singular, as Docker's messages say it
NAMED = {"services": "service", "networks": "network", "secrets": "secret", "configs": "config"}
SINGULAR = {**NAMED, "clusters": "cluster", "nodes": "node", "tasks": "task"}


def name_of(kind: str, obj: dict) -> str | None:
    """The unique name of an object of a named kind (None for the other kinds)."""
    if kind not in NAMED:
        return None
    return (obj.get("Spec") or {}).get("Name")
