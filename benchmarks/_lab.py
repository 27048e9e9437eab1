"""Shared by the lab benchmarks (not a benchmark itself): Docker's own swarm mode on a lab built with
``swarm=False``, for side-by-side measurements."""

from __future__ import annotations

import sys

from shoal.lab.lab import Lab, lab_exists


def docker_swarm(lab: Lab) -> None:
    """Docker's own swarm mode from the lab hosts' dockerds (``Lab.docker_swarm``)."""
    lab.docker_swarm()


def lab_in_use() -> bool:
    """True (and says so) when a lab already exists: a lab benchmark needs the machine's only lab."""
    if lab_exists():
        print("a lab already exists; `shoal lab down` first", file=sys.stderr)
        return True
    return False
