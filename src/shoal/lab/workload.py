"""The chaos client: threads that keep creating, scaling, updating and removing services through random
managers while faults come and go, recording every answer (history.py judges them afterwards)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shoal.lab.engine_api import NoAnswer, call, message
from shoal.lab.history import Op, State, outcome_of

LABEL = "shoal.chaos"  # every service the chaos client makes carries it
NETWORK = "chaos-net"
IMAGE = "shoal/demo-web:latest"
TOKEN_ENV = "CHAOS_TOKEN"
MAX_SERVICES = 3  # per client thread
MAX_REPLICAS = 3


def service_spec(name: str, state: State, dnsrr: bool = False) -> dict:
    """The spec of a chaos service: demo-web on the chaos network, replicas and token from state; a
    published port (mesh) unless dnsrr (Docker's routing mesh does not work on this kernel)."""
    endpoint = {"Mode": "dnsrr"} if dnsrr else {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80}]}
    return {"Name": name, "Labels": {LABEL: "1"},
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Env": [f"{TOKEN_ENV}={state.token}"]},
                             "Networks": [{"Target": NETWORK}],
                             "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000}},
            "Mode": {"Replicated": {"Replicas": state.replicas}},
            "UpdateConfig": {"Parallelism": 0, "FailureAction": "continue"},
            "EndpointSpec": endpoint}


def state_of(spec: dict) -> State | None:
    """The State a service's spec describes (None if it is not a replicated chaos service)."""
    try:
        replicas = spec["Mode"]["Replicated"]["Replicas"]
        env = spec["TaskTemplate"]["ContainerSpec"].get("Env") or []
    except (KeyError, TypeError):
        return None
    token = next((e.split("=", 1)[1] for e in env if e.startswith(f"{TOKEN_ENV}=")), "")
    return State(replicas, token)


class Client:
    """``threads`` client threads; each owns the services it creates (so each service's operations are
    ordered) and sends every request to a random API socket of ``targets`` (host name → socket)."""

    def __init__(self, targets: Callable[[], dict[str, Path]], rng: random.Random, prefix: str,
                 threads: int = 3, dnsrr: bool = False, timeout: float = 20, pause: float = 0.3) -> None:
        self.targets = targets
        self.prefix = prefix
        self.dnsrr = dnsrr
        self.timeout = timeout
        self.pause = pause
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._run, args=(i, random.Random(rng.random())),
                                          name=f"chaos-client-{i}", daemon=True) for i in range(threads)]

    def start(self) -> None:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def stop(self) -> list[Op]:
        """Stop sending; wait for the requests in flight (each ends within its time-out)."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout * 2 + 5)
        with self._lock:
            return list(self.ops)

    # -- one thread ----------------------------------------------------------------------------------------
    def _run(self, n: int, rng: random.Random) -> None:
        owned: dict[str, State] = {}  # services this thread created and may still change
        made = 0
        while not self._stop.is_set():
            if not owned or (len(owned) < MAX_SERVICES and rng.random() < 0.3):
                made += 1
                name = f"{self.prefix}-{n}-{made}"
                st = State(rng.randint(1, MAX_REPLICAS), f"t{rng.randrange(10**6)}")
                op = self._send(rng, "create", name, st, "POST", "/services/create",
                                lambda st=st, name=name: service_spec(name, st, self.dnsrr))
                if op.outcome == "ok":
                    owned[name] = st
            else:
                name = rng.choice(sorted(owned))
                r = rng.random()
                if r < 0.15:
                    op = self._send(rng, "remove", name, None, "DELETE", f"/services/{name}", None)
                    if op.outcome != "refused":
                        del owned[name]  # gone, or maybe gone: leave it alone
                else:
                    self._change(rng, name, "scale" if r < 0.6 else "update", owned)
            self._stop.wait(rng.uniform(0, self.pause))

    def _change(self, rng: random.Random, name: str, kind: str, owned: dict[str, State]) -> None:
        """Read the service (its version), then scale or update it from what was read."""
        via, sock = rng.choice(sorted(self.targets().items()))
        start = time.monotonic() - self._t0
        try:
            status, svc = call(sock, "GET", f"/services/{name}", timeout=self.timeout)
        except NoAnswer:
            return
        if status != 200 or not isinstance(svc, dict) or (cur := state_of(svc["Spec"])) is None:
            return  # not there (yet) on this manager, or it does not answer: nothing was sent
        self._record(Op("read", name, cur, via, start, time.monotonic() - self._t0, "ok", status))
        spec = svc["Spec"]
        if kind == "scale":
            st = State(rng.choice([r for r in range(1, MAX_REPLICAS + 1) if r != cur.replicas] or [1]), cur.token)
            spec["Mode"]["Replicated"]["Replicas"] = st.replicas
        else:
            st = State(cur.replicas, f"t{rng.randrange(10**6)}")
            spec["TaskTemplate"]["ContainerSpec"]["Env"] = [f"{TOKEN_ENV}={st.token}"]
        version = svc["Version"]["Index"]
        op = self._send(rng, kind, name, st, "POST", f"/services/{svc['ID']}/update?version={version}",
                        lambda: spec, via=(via, sock))
        if op.outcome == "ok":
            owned[name] = st

    def _send(self, rng: random.Random, kind: str, name: str, st: State | None, method: str, path: str,
              body: Callable[[], dict] | None, via: tuple[str, Path] | None = None) -> Op:
        host, sock = via or rng.choice(sorted(self.targets().items()))
        start = time.monotonic() - self._t0
        try:
            status, answer = call(sock, method, path, body() if body else None, timeout=self.timeout)
            detail = "" if status < 300 else message(answer)
        except NoAnswer as exc:
            status, detail = 0, str(exc)
            sent = exc.sent
        else:
            sent = True
        outcome = outcome_of(status) if sent else "refused"  # not even connected: it changed nothing
        return self._record(Op(kind, name, st, host, start, time.monotonic() - self._t0, outcome, status, detail))

    def _record(self, op: Op) -> Op:
        with self._lock:
            self.ops.append(op)
        return op


def count(ops: Sequence[Op], outcome: str) -> int:
    return sum(1 for o in ops if o.outcome == outcome)
