"""Shared by the lab benchmarks (not a benchmark itself): Docker's own swarm mode on a lab built with
``swarm=False``, for side-by-side measurements."""

from __future__ import annotations

import sys

from shoal.lab.lab import Lab, lab_exists


def docker_swarm(lab: Lab) -> None:
    """`docker swarm init` on the first manager's dockerd, then every other host's dockerd joins with
    the token of its lab role."""
    first, *others = lab.managers
    e = lab.engine_docker
    e(first.name, "swarm", "init", "--advertise-addr", first.ip)
    tokens = {role: e(first.name, "swarm", "join-token", "-q", role).stdout.strip() for role in ("manager", "worker")}
    for h in others + lab.workers:
        e(h.name, "swarm", "join", "--token", tokens[h.role], "--advertise-addr", h.ip, f"{first.ip}:2377")


def lab_in_use() -> bool:
    """True (and says so) when a lab already exists: a lab benchmark needs the machine's only lab."""
    if lab_exists():
        print("a lab already exists; `shoal lab down` first", file=sys.stderr)
        return True
    return False
