"""Shared by the lab benchmarks (not a benchmark itself): Docker's own swarm mode on a lab built with
``swarm=False``, for side-by-side measurements."""

from __future__ import annotations

from shoal.lab.lab import Lab


def docker_swarm(lab: Lab) -> None:
    """`docker swarm init` on the first manager's dockerd, then every other host's dockerd joins with
    the token of its lab role."""
    first, *others = lab.managers
    e = lab.engine_docker
    e(first.name, "swarm", "init", "--advertise-addr", first.ip)
    tokens = {role: e(first.name, "swarm", "join-token", "-q", role).stdout.strip() for role in ("manager", "worker")}
    for h in others + lab.workers:
        e(h.name, "swarm", "join", "--token", tokens[h.role], "--advertise-addr", h.ip, f"{first.ip}:2377")
