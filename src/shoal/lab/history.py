"""The chaos client's history and its checker: nothing acknowledged is lost, nothing refused appears.

Every operation the client sends is recorded with its outcome:

- ``ok``: the API acknowledged it (2xx);
- ``refused``: a definite refusal (4xx): it must have changed nothing;
- ``unknown``: no answer, a time-out or a 5xx: it may have been applied or not.

Each service is driven by one client thread at a time, so its operations are totally ordered; an update
carries the version it read, so an update that was sent earlier cannot be applied after a later one.
After the round, the state each service may be in is the state of its last acknowledged operation, or
that of any unknown operation sent after it; the store must hold one of those. The client also records
what it reads before each change (``read``): a read, even a stale one, may only show a state that an
acknowledged or unknown operation wrote, so a refused update whose token shows up is caught even when a
later update overwrote it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

OUTCOMES = ("ok", "refused", "unknown")
KINDS = ("create", "scale", "update", "remove", "read")


@dataclass(frozen=True)
class State:
    """What the checker compares of a service: its replica count and the token in its tasks' env."""

    replicas: int
    token: str


ABSENT = None  # the service does not exist


@dataclass
class Op:
    """One operation of the chaos client and what came of it."""

    kind: str  # create | scale | update | remove | read (what the client saw before a change)
    service: str  # the service's name (each create uses a fresh one)
    state: State | None  # the service's state if the op applies (None for remove)
    via: str  # the host whose API it was sent to
    start: float  # seconds since the round began
    end: float
    outcome: str  # ok | refused | unknown
    status: int = 0  # the HTTP status (0: no answer)
    detail: str = ""  # the error message, if any

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state"] = None if self.state is None else asdict(self.state)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Op:
        st = d.get("state")
        return cls(**{**d, "state": State(**st) if st else None})


def outcome_of(status: int) -> str:
    """ok for 2xx, refused for 4xx, unknown for anything else (5xx, or 0: no answer)."""
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "refused"
    return "unknown"


def possible_states(ops: Iterable[Op]) -> set[State | None]:
    """The states one service may be in after its operations (in the order they were sent)."""
    possible: set[State | None] = {ABSENT}
    for op in ops:
        if op.kind == "read":
            continue
        after = ABSENT if op.kind == "remove" else op.state
        if op.outcome == "ok":
            possible = {after}
        elif op.outcome == "unknown":
            possible = possible | {after}
    return possible


def check_history(ops: Iterable[Op], observed: Mapping[str, State]) -> list[str]:
    """Violations of the history against the services observed in the store (name → State); only the
    services the history names are judged."""
    by_service: dict[str, list[Op]] = {}
    for op in ops:
        by_service.setdefault(op.service, []).append(op)
    problems = []
    for name, sops in sorted(by_service.items()):
        sops.sort(key=lambda o: o.start)
        possible = possible_states(sops)
        seen = observed.get(name, ABSENT)
        if seen not in possible:
            problems.append(f"service {name}: the store has {_show(seen)}, but its history allows only "
                            f"{' or '.join(sorted(_show(p) for p in possible))}; history: {_story(sops)}")
        written: set[State | None] = set()
        for op in sops:
            if op.kind == "read" and op.state not in written:
                problems.append(f"service {name}: a read via {op.via} at {op.start:.1f}s saw {_show(op.state)}, "
                                f"which no acknowledged or unknown write made; history: {_story(sops)}")
            elif op.kind != "read" and op.outcome != "refused":
                written.add(op.state)
    return problems


def _story(ops: Iterable[Op]) -> str:
    return "; ".join(f"{o.start:.1f}s {o.kind} {_show(o.state) if o.kind != 'remove' else ''} via {o.via} "
                     f"→ {o.outcome} {o.status} {o.detail[:120]}".replace("  ", " ") for o in ops)


def _show(state: State | None) -> str:
    return "no service" if state is None else f"replicas={state.replicas} token={state.token}"


def save_history(path: Path, ops: Iterable[Op]) -> None:
    """Write the history as JSON lines."""
    path.write_text("".join(json.dumps(o.to_dict()) + "\n" for o in ops))


def load_history(path: Path) -> list[Op]:
    return [Op.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
