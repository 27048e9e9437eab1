"""Object IDs and timestamps in Docker's shapes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int, width: int = 0) -> str:
    """``n`` in lower-case base36, left-padded with zeros to ``width``."""
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out)).rjust(width, "0") or "0"


def new_id() -> str:
    """A 25-character lower-case base36 ID from 128 random bits, as swarmkit makes them."""
    return base36(secrets.randbits(128), 25)


def now() -> str:
    """The current time as RFC 3339 with nanoseconds, as the Engine API writes it."""
    t = datetime.now(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}000Z"


def parse_time(s: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp as written by :func:`now` (or Docker)."""
    if not s:
        return 0.0
    main, _, frac = s.rstrip("Z").partition(".")
    base = datetime.strptime(main[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac[:9]) if frac else 0.0)
