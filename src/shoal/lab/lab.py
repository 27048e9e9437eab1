"""The Lab: a multi-host shoal cluster on one machine, and its state file ``/var/lib/shoal-lab/lab.json``.

Python API (for tests and benchmarks)::

    lab = Lab.up(workers=2, swarm=False)     # or Lab.load() for the lab that exists
    lab.engine_docker("worker1", "info", "--format", "{{.Name}}")
    lab.docker("manager", "node", "ls")      # the machine's docker CLI against the host's shoald
    lab.exec("worker1", "hostname")          # inside the host's namespaces
    lab.partition("worker2"); lab.heal("worker2"); lab.kill("worker2"); lab.start("worker2")
    lab.down()
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from shoal.lab import lan
from shoal.lab.hosts import (
    DOCKER_CLI,
    HOST_NAME_RE,
    LAB_ROOT,
    NETNS_DIR,
    NETNS_PREFIX,
    SRC_DIR,
    TRACK_CGROUP,
    Host,
    LabError,
    create_holder,
    daemon_env,
    find_cgroups,
    kill_all,
    mount_data_disk,
    remove_cgroup_tree,
    reset_run,
    run,
    spawn_dockerd,
    start_dockerd,
    start_shoald,
    stop_daemons,
    tail,
    wait_dockerd,
)

STATE_FILE = LAB_ROOT / "lab.json"
MACHINE_ENGINE = "unix:///var/run/docker.sock"
DEFAULT_IMAGES = ("shoal/demo-web:latest", "shoal/demo-busybox:latest")
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "setsid", "bash", "dockerd", "mount", "umount", "awk")

Out = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def host_names(workers: int, managers: int) -> list[tuple[str, str]]:
    """(name, role) of every host: ``manager`` (or ``manager1..M``), then ``worker1..N``."""
    if managers < 1 or workers < 0:
        raise LabError("a lab needs at least one manager and zero or more workers")
    mgrs = ["manager"] if managers == 1 else [f"manager{i}" for i in range(1, managers + 1)]
    return [(m, "manager") for m in mgrs] + [(f"worker{i}", "worker") for i in range(1, workers + 1)]


@functools.cache
def shoald_flags_supported() -> frozenset[str]:
    """The options ``shoal daemon`` accepts (so the lab works before and after new flags land)."""
    env = daemon_env(PYTHONPATH=str(SRC_DIR))
    cp = run([sys.executable, "-m", "shoal.cli", "daemon", "--help"], check=False, env=env, timeout=60)
    return frozenset(re.findall(r"--[a-z][a-z0-9-]+", cp.stdout))


def shoald_flags(host: Host) -> list[str]:
    sup = shoald_flags_supported()
    flags = []
    if "--listen-addr" in sup:
        flags += ["--listen-addr", f"{host.ip}:2377"]
    if "--advertise-addr" in sup:
        flags += ["--advertise-addr", host.ip]
    return flags


def _client_env(docker_host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
    env["DOCKER_HOST"] = docker_host
    return env


def save_images(refs: Sequence[str], dest: Path) -> Path:
    """``docker save`` refs from the machine's engine into one tar."""
    env = _client_env(MACHINE_ENGINE)
    missing = [r for r in refs
               if run([DOCKER_CLI, "image", "inspect", r], check=False, env=env).returncode != 0]
    if missing:
        raise LabError(f"image(s) {', '.join(missing)} not found on the machine's engine ({MACHINE_ENGINE}); "
                       "build the demo images with `make images`, or pass a tar file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    run([DOCKER_CLI, "save", "-o", str(dest), *refs], env=env, timeout=300, what="docker save")
    return dest


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LabError("shoal lab needs root (namespaces, mounts, veths)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t, path=daemon_env()["PATH"]) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (util-linux, iproute2, docker.io)")
    if not os.path.exists(DOCKER_CLI):
        raise LabError(f"no docker CLI at {DOCKER_CLI}")


def discover() -> list[str]:
    """Names of hosts that seem to exist: from the netns list, the lab directory and the cgroups."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        names |= {n[len(NETNS_PREFIX):] for n in os.listdir(NETNS_DIR) if n.startswith(NETNS_PREFIX)}
    with contextlib.suppress(OSError):
        names |= {p.name for p in LAB_ROOT.iterdir() if p.is_dir()}
    with contextlib.suppress(OSError):
        names |= {p.name for p in TRACK_CGROUP.iterdir() if p.is_dir()}
    return sorted(n for n in names if HOST_NAME_RE.match(n))


def lab_exists() -> bool:
    """Whether a lab (or the leftovers of one) is on this machine."""
    return STATE_FILE.exists() or lan.lan_exists() or bool(discover()) or LAB_ROOT.exists()


class Lab:
    """A lab: its hosts and the operations on them. Create with :meth:`up`, or :meth:`load` the existing one."""

    def __init__(self, hosts: list[Host], swarm: bool = False, created: float = 0.0, out: Out = _print) -> None:
        self.hosts = hosts
        self.swarm = swarm
        self.created = created or time.time()
        self.out = out
        self._lock = threading.Lock()

    # -- state ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, out: Out = _print) -> Lab:
        """The lab recorded in the state file (LabError if there is none)."""
        try:
            st = json.loads(STATE_FILE.read_text())
        except FileNotFoundError:
            raise LabError("no lab: `shoal lab up` creates one") from None
        except ValueError as exc:
            raise LabError(f"{STATE_FILE} is corrupt ({exc}); `shoal lab down` cleans up") from exc
        return cls([Host.from_dict(h) for h in st["hosts"]], swarm=st.get("swarm", False),
                   created=st.get("created", 0.0), out=out)

    def save(self, *hosts: Host) -> None:
        """Write the state file; with hosts, only their entries change (other processes may be changing
        other hosts at the same time: `shoal lab kill worker1 & shoal lab kill worker2`)."""
        LAB_ROOT.mkdir(parents=True, exist_ok=True)
        with self._lock, open(LAB_ROOT / ".lock", "a") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            on_disk: dict[str, dict] = {}
            if hosts:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    on_disk = {d["name"]: d for d in json.loads(STATE_FILE.read_text())["hosts"]}
            names = {h.name for h in hosts}
            data = {"version": 1, "created": self.created, "swarm": self.swarm, "subnet": lan.SUBNET,
                    "lan": {"netns": lan.LAN_NS, "bridge": lan.BRIDGE},
                    "hosts": [h.to_dict() if not hosts or h.name in names else on_disk.get(h.name, h.to_dict())
                              for h in self.hosts]}
            tmp = STATE_FILE.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(STATE_FILE)

    def host(self, host: str | Host) -> Host:
        name = host.name if isinstance(host, Host) else host
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no host {name!r} in the lab (hosts: {', '.join(h.name for h in self.hosts)})")

    @property
    def managers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "manager"]

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "worker"]

    # -- up -------------------------------------------------------------------------------------------
    @classmethod
    def up(cls, workers: int = 2, managers: int = 1, swarm: bool = True, images: Sequence[str] = DEFAULT_IMAGES,
           retain: bool = False, out: Out = _print, data_disk_mib: int = 0) -> Lab:
        """Build a lab. On failure, print what failed and remove what was built (unless retain).

        With data_disk_mib, each manager's shoald data dir is a file system of its own of that size (the
        chaos suite fills it)."""
        _check_prerequisites()
        if lab_exists():
            raise LabError(f"a lab already exists ({STATE_FILE} or leftover shoal-* namespaces/dirs); "
                           "`shoal lab ls` shows it, `shoal lab down` removes it")
        t0 = time.monotonic()
        hosts = [Host(name=n, ip=lan.host_ip(i), role=r) for i, (n, r) in enumerate(host_names(workers, managers))]
        lab = cls(hosts, swarm=False, out=out)
        try:
            lab.save()
            lab._build(images, data_disk_mib)
            t_hosts = time.monotonic() - t0
            if swarm:
                lab._form_swarm()
                lab.swarm = True
                lab.save()
        except BaseException as exc:
            if isinstance(exc, LabError):
                out(f"lab up failed: {exc}")
            if retain:
                out("lab up: keeping the broken lab for inspection (--retain); `shoal lab down` removes it")
            else:
                out("lab up: removing what was built")
                down(out=lambda _m: None)
            raise
        total = time.monotonic() - t0
        out(f"lab up: {len(hosts)} hosts in {total:.1f}s (hosts ready after {t_hosts:.1f}s"
            + (f", swarm formed in {total - t_hosts:.1f}s)" if swarm else ")"))
        return lab

    def _build(self, images: Sequence[str], data_disk_mib: int = 0) -> None:
        lan.create_lan()
        pool = cf.ThreadPoolExecutor(max_workers=len(self.hosts) + 2)
        with pool:
            flags = pool.submit(shoald_flags_supported)
            tar = pool.submit(save_images, list(images), LAB_ROOT / "images" / "up.tar") if images else None
            futs = {pool.submit(self._build_host, h, tar, flags, data_disk_mib if h.role == "manager" else 0): h
                    for h in self.hosts}
            errors: dict[str, None] = {}  # every host's failure (once each), not only the first
            for fut in cf.as_completed(futs):
                try:
                    self.out(fut.result())
                except Exception as exc:
                    errors[str(exc) if isinstance(exc, LabError) else f"host {futs[fut].name}: {exc!r}"] = None
            if tar is not None and tar.exception() is None:
                tar.result().unlink(missing_ok=True)
        if errors:
            raise LabError("\n".join(errors))

    def _build_host(self, h: Host, tar: cf.Future[Path] | None, flags: cf.Future[frozenset[str]],
                    data_disk_mib: int = 0) -> str:
        t0 = time.monotonic()
        if data_disk_mib:
            mount_data_disk(h, data_disk_mib)  # before the holder copies the machine's mounts
        create_holder(h)
        lan.connect(h)
        self.save(h)
        t_dockerd = start_dockerd(h)
        self.save(h)
        t1 = time.monotonic()
        if tar is not None:
            self._engine_load(h, tar.result())
        t_images = time.monotonic() - t1
        flags.result()
        t_shoald = start_shoald(h, shoald_flags(h))
        h.state = "running"
        self.save(h)
        return (f"{h.name}: {h.ip} ready in {time.monotonic() - t0:.1f}s "
                f"(dockerd {t_dockerd:.1f}s, images {t_images:.1f}s, shoald {t_shoald:.1f}s)")

    def _engine_load(self, h: Host, tar: Path) -> None:
        cp = self.engine_docker(h, "load", "-q", "-i", str(tar), check=False, timeout=300)
        if cp.returncode != 0:
            raise LabError(f"host {h.name}: docker load {tar} failed: {cp.stderr.strip()}; "
                           f"dockerd log {h.dockerd_log}:\n{tail(h.dockerd_log)}")

    def _swarm_cmd(self, h: Host, *args: str) -> str:
        cp = self.docker(h, *args, check=False, timeout=120)
        if cp.returncode != 0:
            raise LabError(f"host {h.name}: `docker {' '.join(args)}` (on its shoald) failed: "
                           f"{(cp.stderr or cp.stdout).strip()}; shoald log {h.shoald_log}:\n{tail(h.shoald_log)}")
        return cp.stdout.strip()

    def _form_swarm(self) -> None:
        """swarm init on the first manager; the other managers, then the workers join it."""
        first, others = self.managers[0], self.managers[1:]
        self._swarm_cmd(first, "swarm", "init", "--advertise-addr", first.ip)
        remote = f"{first.ip}:2377"
        for role, hosts in (("manager", others), ("worker", self.workers)):
            if not hosts:
                continue
            token = self._swarm_cmd(first, "swarm", "join-token", "-q", role)
            for h in hosts:
                try:
                    self._swarm_cmd(h, "swarm", "join", "--token", token, "--advertise-addr", h.ip, remote)
                except LabError as exc:
                    raise LabError(f"{exc}\n  {first.name}'s shoald log {first.shoald_log}:\n"
                                   f"{tail(first.shoald_log)}") from None
        self.out(self._swarm_cmd(first, "node", "ls"))

    def docker_swarm(self) -> None:
        """Docker's own swarm mode from the hosts' dockerds (a lab built with ``swarm=False``), to compare
        with: ``swarm init`` on the first manager's dockerd, then every other host's joins with the token of
        its lab role."""
        first, *others = self.managers
        e = self.engine_docker
        e(first, "swarm", "init", "--advertise-addr", first.ip)
        tokens = {r: e(first, "swarm", "join-token", "-q", r).stdout.strip() for r in ("manager", "worker")}
        for h in others + self.workers:
            e(h, "swarm", "join", "--token", tokens[h.role], "--advertise-addr", h.ip, f"{first.ip}:2377")

    # -- down -------------------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove the lab (see :func:`down`)."""
        return down(out=self.out)

    # -- running things in hosts ---------------------------------------------------------------------
    def exec(self, host: str | Host, *cmd: str, check: bool = False, timeout: float | None = 120,
             input: str | None = None, engine: bool = False) -> subprocess.CompletedProcess[str]:
        """Run cmd inside the host (DOCKER_HOST = its shoald, or its dockerd with engine=True)."""
        h = self.host(host)
        env = _client_env(h.engine_host if engine else h.docker_host)
        env["PATH"] = daemon_env()["PATH"]
        return subprocess.run(h.enter(*cmd), capture_output=True, text=True, env=env, timeout=timeout,
                              input=input, check=check)

    def docker(self, host: str | Host, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The machine's docker CLI against the host's shoald (from the machine's namespaces)."""
        return self._docker(self.host(host).docker_host, args, check, timeout)

    def engine_docker(self, host: str | Host, *args: str, check: bool = True,
                      timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The machine's docker CLI against the host's dockerd."""
        return self._docker(self.host(host).engine_host, args, check, timeout)

    @staticmethod
    def _docker(docker_host: str, args: Sequence[str], check: bool,
                timeout: float) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([DOCKER_CLI, *args], capture_output=True, text=True, env=_client_env(docker_host),
                            timeout=timeout, stdin=subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise LabError(f"DOCKER_HOST={docker_host} docker {' '.join(args)} exited {cp.returncode}:\n"
                           f"{cp.stdout}{cp.stderr}")
        return cp

    def ping(self, src: str | Host, dst: str | Host, timeout: int = 1) -> bool:
        """Whether src gets an ICMP echo reply from dst (a host or an address) within timeout seconds."""
        dst_ip = dst.ip if isinstance(dst, Host) else (self.host(dst).ip if HOST_NAME_RE.match(dst) else dst)
        cmd = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
        return self.exec(src, *cmd, "-c1", f"-W{timeout}", dst_ip, timeout=timeout + 10).returncode == 0

    # -- images -----------------------------------------------------------------------------------------
    def load_images(self, refs: Iterable[str]) -> list[str]:
        """Load images (refs on the machine's engine, or tar files) into every running host's dockerd.

        Returns the names of the hosts loaded."""
        refs = list(refs)
        tars = [Path(r) for r in refs if os.path.isfile(r)]
        names = [r for r in refs if not os.path.isfile(r)]
        tmp = LAB_ROOT / "images" / f"load-{os.getpid()}.tar"
        if names:
            tars.append(save_images(names, tmp))
        targets = [h for h in self.hosts if h.state == "running" and h.alive(h.dockerd)]
        for h in self.hosts:
            if h not in targets:
                self.out(f"{h.name}: skipped ({h.status}); `shoal lab load` it again after `shoal lab start`")
        try:
            with cf.ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
                list(pool.map(lambda h: [self._engine_load(h, t) for t in tars], targets))
        finally:
            tmp.unlink(missing_ok=True)
        return [h.name for h in targets]

    # -- faults -------------------------------------------------------------------------------------------
    def stop(self, host: str | Host) -> None:
        """Stop the host's shoald and dockerd cleanly (SIGTERM); the LAN link stays as it is."""
        h = self.host(host)
        for note in stop_daemons(h):
            self.out(f"{h.name}: {note}")
        if h.state != "killed":
            h.state = "stopped"
        self.save(h)

    def start(self, host: str | Host) -> None:
        """Start the host's dockerd and shoald again; after a kill, give it a fresh /run and re-plug it."""
        h = self.host(host)
        if not h.alive(h.holder):
            raise LabError(f"host {h.name}: its namespaces are gone (holder {h.holder} dead); "
                           "`shoal lab down` then `shoal lab up`")
        if h.state == "killed":
            kill_all(h, keep_holder=True)
            reset_run(h)
            if not h.partitioned:  # the cable goes back in before the machine boots
                lan.set_link(h, True)
        # dockerd restoring its containers waits for the network plugin that shoald serves (retrying for
        # ~15 s a network): start shoald while dockerd comes up, as a machine's boot would
        need_dockerd = not h.alive(h.dockerd)
        if need_dockerd:
            spawn_dockerd(h)
            self.save(h)
        if not h.alive(h.shoald):
            start_shoald(h, shoald_flags(h))
        if need_dockerd:
            wait_dockerd(h)
            self.save(h)
        h.state = "running"
        self.save(h)

    def kill(self, host: str | Host) -> None:
        """Power loss: pull the LAN cable, then SIGKILL every process of the host (daemons, etcd,
        containerd, shims and containers); only the namespace holder survives."""
        h = self.host(host)
        lan.set_link(h, False)
        left = kill_all(h, keep_holder=True)
        h.dockerd = h.shoald = 0
        h.state = "killed"
        self.save(h)
        if left:
            raise LabError(f"host {h.name}: processes {left} survived SIGKILL")

    def partition(self, host: str | Host) -> None:
        """Cut the host off the LAN (bridge-side port down); its processes keep running."""
        h = self.host(host)
        h.partitioned = True
        lan.set_link(h, False)
        self.save(h)

    def heal(self, host: str | Host) -> None:
        """Undo partition (a killed host stays unplugged until it is started)."""
        h = self.host(host)
        h.partitioned = False
        if h.state != "killed":
            lan.set_link(h, True)
        self.save(h)

    # -- listing --------------------------------------------------------------------------------------------
    def status(self, h: Host) -> str:
        """running | stopped | killed | partitioned, from the record checked against reality."""
        if not h.alive(h.holder):
            return "gone"
        if h.state == "running" and not (h.alive(h.dockerd) and h.alive(h.shoald)):
            return "degraded"  # a daemon died on its own: see its log
        return h.status

    def rows(self) -> list[list[str]]:
        """The table ``shoal lab ls`` prints."""
        out = [["NAME", "ROLE", "IP", "STATE", "LINK", "HOLDER", "DOCKERD", "SHOALD", "DOCKER_HOST"]]
        for h in self.hosts:
            def pid(p: int, h: Host = h) -> str:
                return "-" if not p else (str(p) if h.alive(p) else f"{p}(dead)")

            link = lan.link_is_up(h)
            out.append([h.name, h.role, h.ip, self.status(h), "?" if link is None else ("up" if link else "down"),
                        pid(h.holder), pid(h.dockerd), pid(h.shoald), h.docker_host])
        return out


# -- down (works from the state file and from what it finds) ------------------------------------------------
def down(out: Out = _print) -> list[str]:
    """Remove the lab and everything it made; idempotent, and safe after a crash. Returns problems left."""
    hosts: dict[str, Host] = {}
    with contextlib.suppress(LabError, KeyError, TypeError):
        hosts = {h.name: h for h in Lab.load(out=out).hosts}
    for name in discover():
        hosts.setdefault(name, Host(name=name, ip=""))
    problems: list[str] = []
    t0 = time.monotonic()
    if hosts:
        with cf.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            for res in pool.map(_teardown_host, hosts.values()):
                problems += res
    lan_left = kill_all(Host(name="lan", ip=""), keep_holder=False) if lan.lan_exists() else []
    if lan_left:
        problems.append(f"processes {lan_left} in {lan.LAN_NS} survived SIGKILL")
    for name in [*(h.netns for h in hosts.values()), lan.LAN_NS]:
        try:
            lan.delete_netns(name)
        except LabError as exc:
            problems.append(str(exc))
    for h in hosts.values():
        for cg in h.cgroups:
            remove_cgroup_tree(Path(cg))
    for cg in find_cgroups(lambda n: n.startswith("shoal-lab-") and bool(HOST_NAME_RE.match(n[10:]))):
        remove_cgroup_tree(cg)
    remove_cgroup_tree(TRACK_CGROUP)
    if TRACK_CGROUP.exists():
        problems.append(f"cgroup {TRACK_CGROUP} is still there (processes left in it?)")
    problems += _remove_lab_root()
    for p in problems:
        out(f"lab down: {p}")
    if hosts:
        out(f"lab down: removed {len(hosts)} host(s) in {time.monotonic() - t0:.1f}s"
            + (" with problems" if problems else ""))
    elif not problems:
        out("lab down: no lab here")
    return problems


def _teardown_host(h: Host) -> list[str]:
    problems = []
    if h.alive(h.holder) and (h.alive(h.shoald) or h.alive(h.dockerd)):
        stop_daemons(h)
    left = kill_all(h, keep_holder=False)
    if left:
        problems.append(f"host {h.name}: processes {left} survived SIGKILL")
    return problems


def _remove_lab_root() -> list[str]:
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target == str(LAB_ROOT) or target.startswith(f"{LAB_ROOT}/"):
                mounts.append(target)
    for m in sorted(mounts, reverse=True):
        run(["umount", "-l", m], check=False)
    errors: list[str] = []
    if LAB_ROOT.exists():
        shutil.rmtree(LAB_ROOT, onerror=lambda _f, p, e: errors.append(f"{p}: {e[1]}"))
    return [f"could not remove {e}" for e in errors[:5]]
