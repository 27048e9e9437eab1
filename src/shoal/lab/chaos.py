"""The chaos suite: rounds of one fault each against a lab of 3 managers and 3 workers, a client
creating, scaling, updating and removing services through random managers meanwhile, and after each
healed fault the checks of invariants.py (polled until they hold: the time that takes is the round's
convergence time) and of history.py (nothing acknowledged lost, nothing refused applied).

A violation stops the run and keeps the lab and the histories for inspection (``shoal lab down`` removes
the lab). Results go to ``<out>/rounds.jsonl`` (one line a round), ``<out>/history-<round>.jsonl`` and
``<out>/summary.json``. ``docker=True`` runs the same against Docker's own swarm mode formed from the
hosts' dockerds (services use dnsrr there: Docker's routing mesh does not work on this kernel).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shoal.lab import faults, invariants
from shoal.lab.engine_api import NoAnswer, call, filters, get, message
from shoal.lab.history import Op, State, check_history, save_history
from shoal.lab.hosts import LabError
from shoal.lab.lab import Lab
from shoal.lab.workload import LABEL, NETWORK, Client, service_spec, state_of

MESH_SERVICE = "chaos-mesh"
MESH_PORT = 8080
DATA_DISK_MIB = 256
PRE_FAULT = 2.0  # seconds of client traffic before the fault
POST_HEAL = 3.0  # and after it is healed
CONVERGE_TIMEOUT = 180.0

_MESH_PROBE = """
import sys, urllib.request
for ip in sys.argv[2:]:
    try:
        urllib.request.urlopen(f"http://{ip}:{sys.argv[1]}/", timeout=3).read()
        print(ip, "ok")
    except Exception as e:
        print(ip, type(e).__name__)
"""

Out = Callable[[str], None]


@dataclass
class Round:
    """What one round did and found."""

    round: int
    kind: str
    host: str
    converge_s: float | None
    ops: dict[str, int]
    violations: list[str] = field(default_factory=list)
    took_s: float = 0.0  # the whole round, fault to checks


class Violation(LabError):
    """An invariant or the history did not hold: the run stops, the lab is kept."""


class Chaos:
    """Rounds of faults against ``lab`` (swarm formed; Docker's when docker=True)."""

    def __init__(self, lab: Lab, seed: int, out_dir: Path, docker: bool = False,
                 kinds: Sequence[str] | None = None, out: Out = print, converge_timeout: float = CONVERGE_TIMEOUT,
                 hold: float = faults.HOLD) -> None:
        self.lab = lab
        self.seed = seed
        self.rng = random.Random(seed)
        self.dir = out_dir
        self.docker = docker
        self.kinds = list(kinds or (faults.DOCKER_KINDS if docker else faults.KINDS))
        self.out = out
        self.converge_timeout = converge_timeout
        self.hold = hold
        self.rounds: list[Round] = []
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- the API --------------------------------------------------------------------------------------------
    def sock(self, host: str) -> Path:
        h = self.lab.host(host)
        return h.docker_sock if self.docker else h.shoal_sock

    def manager_socks(self) -> dict[str, Path]:
        return {h.name: self.sock(h.name) for h in self.lab.managers}

    def leader(self, timeout: float = 60) -> str:
        """The leader's host name, as the first manager that knows one says."""
        deadline = time.monotonic() + timeout
        while True:
            for sock in self.manager_socks().values():
                try:
                    nodes = get(sock, "/nodes", timeout=5)
                except NoAnswer:
                    continue
                for n in nodes:  # type: ignore[union-attr]
                    if (n.get("ManagerStatus") or {}).get("Leader"):
                        return n["Description"]["Hostname"]
            if time.monotonic() > deadline:
                raise Violation(f"no manager knows a leader after {timeout:.0f}s")
            time.sleep(0.5)

    def _write(self, method: str, path: str, body: object = None, ok: tuple[int, ...] = (200, 201)) -> object:
        """A set-up write through the leader, retried while the swarm settles."""
        deadline = time.monotonic() + 60
        while True:
            try:
                status, answer = call(self.sock(self.leader()), method, path, body)
                if status in ok:
                    return answer
                err = f"{status} {message(answer)}"
            except NoAnswer as exc:
                err = str(exc)
            if time.monotonic() > deadline:
                raise LabError(f"{method} {path}: {err}")
            time.sleep(1)

    # -- set-up -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """The chaos network, and (shoal) the routing-mesh service every host must answer for."""
        self._write("POST", "/networks/create", {"Name": NETWORK, "Driver": "overlay", "CheckDuplicate": True},
                    ok=(201, 409))
        if not self.docker:
            spec = service_spec(MESH_SERVICE, State(2, "mesh"))
            spec["Labels"] = {}
            spec["EndpointSpec"]["Ports"] = [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": MESH_PORT}]
            self._write("POST", "/services/create", spec, ok=(201, 409))
        took = self.converge()
        self.out(f"chaos: set up, converged in {took:.1f}s")

    # -- checks -----------------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Everything invariants.py finds wrong now (one read of the leader and of every engine)."""
        try:
            leader = self.leader(timeout=5)
            sock = self.sock(leader)
            nodes = get(sock, "/nodes")
            services = get(sock, "/services")
            tasks = get(sock, "/tasks?filters=" + filters(**{"desired-state": ["running"]}))
        except (NoAnswer, Violation) as exc:
            return [f"the API does not answer: {exc}"]
        containers: dict[str, list[dict]] = {}
        found = []
        for h in self.lab.hosts:
            try:
                containers[h.name] = get(h.docker_sock, "/containers/json?filters="  # type: ignore[assignment]
                                         + filters(label=[invariants.SERVICE_LABEL]))
            except NoAnswer as exc:
                found.append(f"host {h.name}: its engine does not answer: {exc}")
        found += invariants.node_problems(nodes, [h.name for h in self.lab.hosts])  # type: ignore[arg-type]
        found += invariants.task_problems(services, tasks)  # type: ignore[arg-type]
        found += invariants.container_problems(services, containers)  # type: ignore[arg-type]
        found += invariants.address_problems(tasks, containers)  # type: ignore[arg-type]
        if not self.docker and not found:
            found += invariants.mesh_problems(self.mesh_answers())
        return found

    def mesh_answers(self) -> dict[str, str]:
        """From one host, the routing mesh's port on every host's address."""
        src = self.rng.choice(self.lab.hosts)
        ips = {h.ip: h.name for h in self.lab.hosts}
        cp = self.lab.exec(src, sys.executable, "-c", _MESH_PROBE, str(MESH_PORT), *ips, timeout=60)
        answers = {name: "no answer" for name in ips.values()}
        for line in cp.stdout.splitlines():
            ip, _, res = line.partition(" ")
            if ip in ips:
                answers[ips[ip]] = res
        return answers

    def converge(self, since: float | None = None) -> float:
        """Poll the invariants until they all hold; the seconds since ``since`` (default: now) it took.
        Violation if they do not within the time-out."""
        t0 = since if since is not None else time.monotonic()
        deadline = time.monotonic() + self.converge_timeout
        while True:
            found = self.problems()
            if not found:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise Violation(f"not converged {self.converge_timeout:.0f}s after the fault was healed:\n  "
                                + "\n  ".join(found[:30]))
            time.sleep(1)

    def observed(self, names: set[str], timeout: float = 30) -> dict[str, State]:
        """The state of the chaos services, once every manager's API reports the same."""
        deadline = time.monotonic() + timeout
        while True:
            views = []
            for sock in self.manager_socks().values():
                try:
                    svcs = get(sock, "/services?filters=" + filters(label=[LABEL]))
                except NoAnswer:
                    views.append(None)
                    continue
                views.append({s["Spec"]["Name"]: state_of(s["Spec"]) for s in svcs  # type: ignore[union-attr]
                              if s["Spec"]["Name"] in names})
            if views[0] is not None and all(v == views[0] for v in views):
                return views[0]  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise Violation(f"the managers disagree on the services {timeout:.0f}s after converging: {views}")
            time.sleep(0.5)

    # -- rounds ----------------------------------------------------------------------------------------------
    def kind_for(self, i: int) -> str:
        """Rounds go through the kinds in a shuffled order, reshuffled after each pass."""
        if i % len(self.kinds) == 0:
            self._order = self.rng.sample(self.kinds, len(self.kinds))
        return self._order[i % len(self.kinds)]

    def run_round(self, i: int) -> Round:
        kind = self.kind_for(i)
        t0 = time.monotonic()
        client = Client(self.manager_socks, random.Random(self.rng.random()), prefix=f"r{i}", dnsrr=self.docker)
        client.start()
        time.sleep(PRE_FAULT)
        fault = faults.inject(self.lab, kind, self.leader(), self.rng, docker=self.docker)
        self.out(f"round {i}: {kind} on {fault.host}")
        time.sleep(fault.hold or self.hold)
        fault.heal()
        healed = time.monotonic()
        time.sleep(POST_HEAL)
        ops = client.stop()
        save_history(self.dir / f"history-{i}.jsonl", ops)
        writes = Counter(o.outcome for o in ops if o.kind != "read")
        rnd = Round(i, kind, fault.host, None, {**writes, "reads": sum(1 for o in ops if o.kind == "read")})
        try:
            rnd.converge_s = round(self.converge(since=healed), 1)
            observed = self.observed({o.service for o in ops})
            rnd.violations = check_history(ops, observed)
        except Violation as exc:
            rnd.violations = [str(exc)]
        rnd.took_s = round(time.monotonic() - t0, 1)
        self._record(rnd)
        if rnd.violations:
            raise Violation(f"round {i} ({kind} on {fault.host}):\n" + "\n".join(rnd.violations))
        self._clean(ops)
        return rnd

    def _record(self, rnd: Round) -> None:
        self.rounds.append(rnd)
        with open(self.dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(asdict(rnd)) + "\n")
        conv = "-" if rnd.converge_s is None else f"{rnd.converge_s:.1f}s"
        self.out(f"round {rnd.round}: {rnd.kind} on {rnd.host}: converged in {conv}, ops {rnd.ops}, "
                 f"round took {rnd.took_s:.0f}s"
                 + (f", {len(rnd.violations)} VIOLATION(S)" if rnd.violations else ""))

    def _clean(self, ops: list[Op]) -> None:
        """Remove the round's services (the next round's checks see that their containers go)."""
        for name in sorted({o.service for o in ops}):
            self._write("DELETE", f"/services/{name}", ok=(200, 404))

    def run(self, rounds: int) -> dict:
        """Set up, then ``rounds`` rounds; the summary (also in summary.json). Violation stops it."""
        self.setup()
        try:
            for i in range(rounds):
                self.run_round(i)
        finally:
            summary = self.summary()
            (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def summary(self) -> dict:
        return summarize(self.rounds, "docker" if self.docker else "shoal", [self.seed])


def summarize(rounds: Sequence[Round], target: str, seeds: Sequence[int]) -> dict:
    """Rounds run, faults by kind, operations by outcome, violations, convergence per kind (median/max)."""
    by_kind: dict[str, list[float]] = {}
    ops: Counter = Counter()
    for r in rounds:
        by_kind.setdefault(r.kind, [])
        if r.converge_s is not None:
            by_kind[r.kind].append(r.converge_s)
        ops.update(r.ops)
    return {"target": target, "seeds": list(seeds), "rounds": len(rounds),
            "violations": sum(len(r.violations) for r in rounds), "ops": dict(ops),
            "faults": {k: len(v) for k, v in sorted(by_kind.items())},
            "converge_s": {k: {"median": round(statistics.median(v), 1), "max": max(v)}
                           for k, v in sorted(by_kind.items()) if v}}


def load_rounds(out_dir: Path) -> list[Round]:
    """The rounds a run recorded in ``<out_dir>/rounds.jsonl``."""
    return [Round(**json.loads(line)) for line in (out_dir / "rounds.jsonl").read_text().splitlines() if line]


def report(dirs: Sequence[Path]) -> str:
    """A markdown table of the runs in dirs (each a run's --out), shoal's and Docker's side by side."""
    runs: dict[str, list[Round]] = {}
    seeds: dict[str, list[int]] = {}
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        target = summary["target"]
        runs.setdefault(target, []).extend(load_rounds(d))
        seeds.setdefault(target, []).extend(summary.get("seeds") or [summary.get("seed")])
    sums = {t: summarize(rs, t, seeds[t]) for t, rs in runs.items()}
    targets = sorted(sums, key=lambda t: t != "shoal")
    lines = ["| | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]

    def row(name: str, cell: Callable[[dict], str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(sums[t]) for t in targets) + " |")

    row("rounds (seeds)", lambda s: f"{s['rounds']} ({', '.join(map(str, s['seeds']))})")
    row("operations acknowledged", lambda s: str(s["ops"].get("ok", 0)))
    row("refused / unknown outcome", lambda s: f"{s['ops'].get('refused', 0)} / {s['ops'].get('unknown', 0)}")
    row("reads checked", lambda s: str(s["ops"].get("reads", 0)))
    row("violations (lost, refused but applied, not converged)", lambda s: str(s["violations"]))
    kinds = sorted({k for s in sums.values() for k in s["faults"]})
    for k in kinds:
        row(f"{k}: rounds, converged median / max", lambda s, k=k: (
            f"{s['faults'][k]}, {s['converge_s'][k]['median']:.1f} / {s['converge_s'][k]['max']:.1f} s"
            if k in s["converge_s"] else "–"))
    return "\n".join(lines)


def run_chaos(rounds: int, seed: int, out_dir: Path, docker: bool = False, kinds: Sequence[str] | None = None,
              out: Out = print, hold: float = faults.HOLD) -> dict:
    """Build a lab of 3 managers and 3 workers, run the rounds, and remove the lab, unless a violation (or
    an error) stopped the run: then the lab stays for inspection and the exception is raised."""
    lab = Lab.up(workers=3, managers=3, swarm=not docker, out=out, data_disk_mib=0 if docker else DATA_DISK_MIB)
    if docker:
        lab.docker_swarm()
    chaos = Chaos(lab, seed, out_dir, docker=docker, kinds=kinds, out=out, hold=hold)
    try:
        summary = chaos.run(rounds)
    except Exception as exc:
        what = "a violation" if isinstance(exc, Violation) else "an error"
        out(f"chaos: stopped on {what}; the lab is kept (`shoal lab down` removes it), histories in {out_dir}")
        raise
    lab.down()
    return summary
