"""The chaos suite, short and seeded (``make chaos`` and ``shoal lab chaos`` run the long one): a lab of
3 managers and 3 workers, a client creating, scaling, updating and removing services through random
managers, one fault a round; after each heal every acknowledged write is in the store, nothing refused
is, and the swarm converges (one container per slot, no address twice, every node Ready, the routing
mesh answering on every host)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import module_lab

from shoal.lab.chaos import DATA_DISK_MIB, Chaos
from shoal.lab.history import load_history
from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

SEED = 13
KINDS = ("leader-kill", "leader-sigstop", "disk-full")


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=3, managers=3, swarm=True, data_disk_mib=DATA_DISK_MIB) as the_lab:
        yield the_lab


def test_seeded_rounds_lose_nothing_and_converge(lab: Lab, tmp_path: Path) -> None:
    chaos = Chaos(lab, SEED, tmp_path, kinds=KINDS, out=lambda m: print(m, file=sys.stderr), hold=5)
    summary = chaos.run(len(KINDS))
    assert summary["rounds"] == len(KINDS) and summary["violations"] == 0, summary
    assert summary["faults"] == {k: 1 for k in KINDS}
    assert all(r.converge_s is not None for r in chaos.rounds)
    # the client did work through the faults, and its history is what the checker judged
    ops = [op for i in range(len(KINDS)) for op in load_history(tmp_path / f"history-{i}.jsonl")]
    assert summary["ops"]["ok"] == sum(1 for o in ops if o.outcome == "ok" and o.kind != "read") > 10
    assert {o.kind for o in ops if o.outcome == "ok"} == {"create", "scale", "update", "remove", "read"}
