"""Query parameters read as moby's API router reads them."""

from __future__ import annotations

from collections.abc import Mapping

from shoal.model.errors import BadRequest

TRUE, FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(query: Mapping[str, str], name: str, *, detail: bool = True) -> bool:
    """Go's ``strconv.ParseBool`` of a parameter (absent or empty: false); anything else is a 400
    ``invalid value for <name>: <value>`` (with Go's parse error after it, unless ``detail`` is off,
    as moby words each endpoint)."""
    value = query.get(name, "")
    if value in TRUE:
        return True
    if value in FALSE or value == "":
        return False
    suffix = f': strconv.ParseBool: parsing "{value}": invalid syntax' if detail else ""
    raise BadRequest(f"invalid value for {name}: {value}{suffix}")


def bool_value(query: Mapping[str, str], name: str) -> bool:
    """moby's ``httputils.BoolValue``: false for absent, ``0``, ``no``, ``false``, ``none`` (any case),
    true for anything else."""
    return query.get(name, "").strip().lower() not in ("", "0", "no", "false", "none")
