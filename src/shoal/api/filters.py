"""Docker's ``filters`` query parameter: parsing and matching."""

from __future__ import annotations

import json

from shoal.model.errors import BadRequest


def parse_filters(raw: str | None, allowed: set[str] | None) -> dict[str, list[str]]:
    """``{"name": {"x": true}}`` or ``{"name": ["x"]}`` → ``{"name": ["x"]}``; keys not in ``allowed``
    (unless it is None) → 400."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest(f"invalid filter '{raw}'") from None
    if not isinstance(data, dict):
        raise BadRequest(f"invalid filter '{raw}'")
    out: dict[str, list[str]] = {}
    for key, val in data.items():
        if allowed is not None and key not in allowed:
            raise BadRequest(f"invalid filter '{key}'")
        if isinstance(val, dict):
            out[key] = [k for k, v in val.items() if v]
        elif isinstance(val, list):
            out[key] = [str(v) for v in val]
        else:
            raise BadRequest(f"invalid filter '{key}'")
    return out


def match_labels(labels: dict[str, str], wanted: list[str]) -> bool:
    """Each ``key`` or ``key=value`` must be present."""
    for w in wanted:
        k, sep, v = w.partition("=")
        if k not in labels or (sep and labels[k] != v):
            return False
    return True


def match_any_prefix(value: str, wanted: list[str]) -> bool:
    return any(value.startswith(w) for w in wanted)
