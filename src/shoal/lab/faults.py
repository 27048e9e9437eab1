"""The faults the chaos suite injects into a lab, each undone by its ``heal``.

Kinds (``KINDS``): a host killed (the leader's, a worker's); the leader's daemon SIGSTOPped 10 s; a
manager partitioned (a minority), or partitioned one way (it hears but is not heard); the engine killed
under a live shoald, or shoald killed, then restarted; a manager's etcd member killed; a manager's data
disk full; packet loss (nftables ``numgen random`` drops: this kernel has no netem) or a slow link
(``tc tbf``) on a host's LAN link. Against Docker's own swarm mode (``docker=True``) the daemon is
dockerd, and the kinds that need shoal's processes or data disk do not apply.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.lab import lan
from shoal.lab.hosts import Host, LabError, run, wait_dead
from shoal.lab.lab import Lab

HOLD = 10.0  # seconds a fault lasts before it is healed
SIGSTOP_HOLD = 10.0  # a stopped leader is always resumed after 10 s
LOSS_PERCENT = 30
SLOW_RATE = "512kbit"
TABLE = "shoal_chaos"  # the nftables table of a host's injected drops
FILLER = "chaos-filler"  # the file that fills a manager's data disk

KINDS = ("leader-kill", "worker-kill", "leader-sigstop", "minority-partition", "asymmetric-partition",
         "dockerd-kill", "shoald-kill", "etcd-kill", "disk-full", "packet-loss", "slow-link")
DOCKER_KINDS = ("leader-kill", "worker-kill", "leader-sigstop", "minority-partition", "asymmetric-partition",
                "dockerd-kill", "packet-loss", "slow-link")


@dataclass
class Fault:
    """An injected fault: what and where, and how to undo it."""

    kind: str
    host: str
    heal: Callable[[], None] = field(repr=False)
    hold: float | None = None  # how long it must last, if the kind says (else the run's hold)


def inject(lab: Lab, kind: str, leader: str, rng: random.Random, docker: bool = False) -> Fault:
    """Inject one fault of ``kind``; ``leader`` is the current leader's host name."""
    managers = [h.name for h in lab.managers]
    workers = [h.name for h in lab.workers]
    anyone = managers + workers
    if kind == "leader-kill":
        return _kill_host(lab, kind, leader)
    if kind == "worker-kill":
        return _kill_host(lab, kind, rng.choice(workers))
    if kind == "leader-sigstop":
        h = lab.host(leader)
        pid = h.dockerd if docker else h.shoald
        os.kill(pid, signal.SIGSTOP)
        return Fault(kind, leader, lambda: os.kill(pid, signal.SIGCONT), hold=SIGSTOP_HOLD)
    if kind == "minority-partition":
        name = rng.choice(managers)
        lab.partition(name)
        return Fault(kind, name, lambda: lab.heal(name))
    if kind == "asymmetric-partition":
        name = rng.choice(managers)
        _nft(lab.host(name), 'chain post { type filter hook postrouting priority 0; oifname "eth0" drop; }')
        return Fault(kind, name, lambda: _nft_flush(lab.host(name)))
    if kind == "dockerd-kill":
        return _kill_daemon(lab, kind, rng.choice(anyone), "dockerd")
    if kind == "shoald-kill":
        return _kill_daemon(lab, kind, rng.choice(anyone), "shoald")
    if kind == "etcd-kill":
        name = rng.choice(managers)
        pid = etcd_pid(lab.host(name))
        if not pid:
            raise LabError(f"host {name}: no etcd member to kill")
        os.kill(pid, signal.SIGKILL)
        return Fault(kind, name, lambda: None)  # shoald's supervisor restarts it
    if kind == "disk-full":
        name = rng.choice(managers)
        filler = fill_disk(lab.host(name))
        return Fault(kind, name, lambda: filler.unlink(missing_ok=True))
    if kind == "packet-loss":
        name = rng.choice(anyone)
        drop = f"numgen random mod 100 < {LOSS_PERCENT} drop"
        _nft(lab.host(name), f'chain pre {{ type filter hook prerouting priority -300; iifname "eth0" {drop}; }}',
             f'chain post {{ type filter hook postrouting priority 300; oifname "eth0" {drop}; }}')
        return Fault(kind, name, lambda: _nft_flush(lab.host(name)))
    if kind == "slow-link":
        name = rng.choice(anyone)
        h = lab.host(name)
        tbf = ["root", "tbf", "rate", SLOW_RATE, "burst", "32kbit", "latency", "200ms"]
        run(["tc", "-n", h.netns, "qdisc", "replace", "dev", "eth0", *tbf], what=f"{name}: slow link")
        run(["tc", "-n", lan.LAN_NS, "qdisc", "replace", "dev", lan.port(h), *tbf], what=f"{name}: slow link")
        return Fault(kind, name, lambda: _untbf(h))
    raise LabError(f"unknown fault kind {kind!r} (kinds: {', '.join(KINDS)})")


def _kill_host(lab: Lab, kind: str, name: str) -> Fault:
    lab.kill(name)
    return Fault(kind, name, lambda: lab.start(name))


def _kill_daemon(lab: Lab, kind: str, name: str, daemon: str) -> Fault:
    """SIGKILL one daemon (its children live on, as they would); heal starts it again."""
    h = lab.host(name)
    pid = getattr(h, daemon)
    os.kill(pid, signal.SIGKILL)
    wait_dead([pid], 5)
    return Fault(kind, name, lambda: lab.start(name))


def _nft(h: Host, *chains: str) -> None:
    """Load a table of drops into the host's network namespace."""
    argv = h.enter("nft", "-f", "-")
    body = "\n".join(chains)
    cp = subprocess.run(argv, input=f"table inet {TABLE} {{\n{body}\n}}\n", capture_output=True, text=True,
                        timeout=30)
    if cp.returncode != 0:
        raise LabError(f"host {h.name}: nft -f - exited {cp.returncode}: {cp.stderr.strip()}")


def _nft_flush(h: Host) -> None:
    run(h.enter("nft", "delete", "table", "inet", TABLE), check=False)


def _untbf(h: Host) -> None:
    run(["tc", "-n", h.netns, "qdisc", "del", "dev", "eth0", "root"], check=False)
    run(["tc", "-n", lan.LAN_NS, "qdisc", "del", "dev", lan.port(h), "root"], check=False)


def etcd_pid(h: Host) -> int:
    """The pid of the host's etcd member (from the pid file shoald keeps), 0 if none runs."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((h.dir / "shoal" / "etcd" / "etcd.pid").read_text())
        if h.alive(pid):
            return pid
    return 0


def fill_disk(h: Host) -> Path:
    """Fill the file system of the host's shoald data dir (a small one: ``Lab.up(data_disk_mib=...)``)
    until it is full; returns the filler file."""
    filler = h.dir / "shoal" / FILLER
    if os.statvfs(filler.parent).f_blocks * os.statvfs(filler.parent).f_frsize > 4 << 30:
        raise LabError(f"host {h.name}: its data dir is not on a small file system (lab up with data_disk_mib)")
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler
