"""One lab host: a network namespace plus a holder process with its own mount and UTS namespaces, and
the dockerd and shoald run inside them.

Every process of a host is started through :func:`spawn`, which detaches it (``setsid -f``, so it is
never a zombie child of the caller), reports its pid and puts it in the host's tracking cgroup
(``/sys/fs/cgroup/pids/shoal-lab/<host>``). Containers land below it (dockerd's ``--cgroup-parent`` is
relative), so the cgroup plus the netns finds every process a host ever made.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAB_ROOT = Path("/var/lib/shoal-lab")
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "shoal-"
CGROUP_ROOT = Path("/sys/fs/cgroup")
TRACK_CGROUP = CGROUP_ROOT / "pids" / "shoal-lab"
HOST_NAME_RE = re.compile(r"^(manager\d*|worker\d+)$")
# the machine's (recent) docker CLI
DOCKER_CLI = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else shutil.which("docker") or "docker"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SRC_DIR = Path(__file__).resolve().parents[2]  # the directory holding the ``shoal`` package


class LabError(Exception):
    """A lab step failed; the message says which and carries the tail of the relevant log."""


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, indented, or a note that there is none."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return f"    (no log at {path})"
    return "\n".join(f"    {line}" for line in text) or f"    ({path} is empty)"


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 60, what: str = "",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a short command, capturing its output; raise LabError (with stderr) when it fails."""
    try:
        cp = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{what or cmd[0]}: {' '.join(cmd)}: {exc}") from exc
    if check and cp.returncode != 0:
        out = (cp.stderr.strip() or cp.stdout.strip())[-2000:]
        raise LabError(f"{what or cmd[0]}: `{' '.join(cmd)}` exited {cp.returncode}: {out}")
    return cp


def daemon_env(**extra: str) -> dict[str, str]:
    """Environment for daemons started in a host: the caller's, minus Docker client settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["PATH"] = f"{env.get('PATH', '')}:{SYS_PATH}".strip(":")
    env.update(extra)
    return env


# -- processes ----------------------------------------------------------------------------------------
def alive(pid: int | None) -> bool:
    """Whether pid is a live process (zombies count as dead)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_dead(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until all pids are dead; return those still alive after timeout."""
    pending = [p for p in pids if p]
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if alive(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def terminate(pid: int | None, timeout: float) -> bool:
    """SIGTERM pid, wait up to timeout, then SIGKILL. True if it had to be killed."""
    if not alive(pid):
        return False
    assert pid is not None
    signal_pids([pid], signal.SIGTERM)
    if not wait_dead([pid], timeout):
        return False
    signal_pids([pid], signal.SIGKILL)
    wait_dead([pid], 5)
    return True


def netns_pids(netns: str) -> set[int]:
    """Pids of processes whose network namespace is /run/netns/<netns> (like ``ip netns pids``)."""
    try:
        st = os.stat(NETNS_DIR / netns)
    except OSError:
        return set()
    out = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ns = os.stat(f"/proc/{entry.name}/ns/net")
            if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino):
                out.add(int(entry.name))
    return out


def cgroup_pids(cgroup: Path | None) -> set[int]:
    """Pids in a cgroup and all cgroups below it."""
    out: set[int] = set()
    if cgroup is None or not cgroup.is_dir():
        return out
    for dirpath, _dirs, _files in os.walk(cgroup):
        with contextlib.suppress(OSError):
            out.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
    return out


def remove_cgroup_tree(cgroup: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroups must be empty of processes)."""
    if not cgroup.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def find_cgroups(name_ok: Callable[[str], bool], max_depth: int = 4) -> list[Path]:
    """Cgroup directories (in every v1 hierarchy and the v2 one) whose name passes name_ok."""
    found: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return found
    roots = [p for p in CGROUP_ROOT.iterdir() if p.is_dir()] or [CGROUP_ROOT]

    def walk(d: Path, depth: int) -> None:
        try:
            subs = [e for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for e in subs:
            if name_ok(e.name):
                found.append(Path(e.path))
            elif depth < max_depth:
                walk(Path(e.path), depth + 1)

    for r in roots:
        walk(r, 1)
    return found


def spawn(argv: Sequence[str], *, log: Path, env: dict[str, str], cgroup: Path | None,
          ready_timeout: float | None = None) -> int:
    """Start argv detached (new session, parent = init) with stdout+stderr appended to log.

    The process joins ``cgroup`` first. Returns its pid. With ready_timeout, argv is expected to
    write a line to fd 3 when it is ready; wait for it (LabError with the log's tail if it does not).
    """
    cgfile = str(cgroup) if cgroup is not None and cgroup.is_dir() else ""
    r, w = os.pipe()
    try:
        script = ("" if w == 3 else f"exec 3>&{w} {w}>&-; ") + (
            'cg=$1; keep=$2; shift 2; [ -n "$cg" ] && echo $$ >"$cg/cgroup.procs"; echo $$ >&3; '
            '[ "$keep" = 1 ] || exec 3>&-; exec "$@"')
        with open(log, "ab") as logf:
            cp = subprocess.run(["setsid", "-f", "bash", "-c", script, "spawn", cgfile,
                                 "1" if ready_timeout is not None else "0", *argv],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                pass_fds=(w,), cwd="/", timeout=30)
        os.close(w)
        w = -1
        if cp.returncode != 0:
            raise LabError(f"could not start {argv[0]} (setsid exited {cp.returncode}); log {log}:\n{tail(log)}")
        lines = _read_lines(r, 2 if ready_timeout is not None else 1, ready_timeout or 10)
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
    if not lines or not lines[0].isdigit():
        raise LabError(f"could not start {' '.join(argv[:3])}...; log {log}:\n{tail(log)}")
    pid = int(lines[0])
    if ready_timeout is not None and (len(lines) < 2 or lines[1] != "ready"):
        signal_pids([pid], signal.SIGKILL)
        raise LabError(f"{' '.join(argv[:3])}... did not get ready; log {log}:\n{tail(log)}")
    return pid


def _read_lines(fd: int, n: int, timeout: float) -> list[str]:
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split()


# -- sockets --------------------------------------------------------------------------------------------
def ping_socket(path: str | Path, timeout: float = 2) -> bool:
    """Whether an Engine-API server answers ``GET /_ping`` with 200 on the unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: lab\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.") and head[9:12] == b"200"


def wait_socket(path: Path, pid: int, what: str, log: Path, timeout: float) -> float:
    """Wait until the server on path answers /_ping; LabError if pid dies or time runs out."""
    t0 = time.monotonic()
    while not ping_socket(path, timeout=5):
        if not alive(pid):
            raise LabError(f"{what} (pid {pid}) exited before answering on {path}; log {log}:\n{tail(log)}")
        if time.monotonic() - t0 > timeout:
            raise LabError(f"{what} (pid {pid}) did not answer on {path} within {timeout:.0f}s; "
                           f"log {log}:\n{tail(log)}")
        time.sleep(0.05)
    return time.monotonic() - t0


# -- hosts ------------------------------------------------------------------------------------------------
@dataclass
class Host:
    """A lab host as recorded in the state file."""

    name: str
    ip: str
    role: str = "worker"  # manager | worker (the swarm role it is meant to have)
    holder: int = 0
    dockerd: int = 0
    shoald: int = 0
    state: str = "new"  # new | running | stopped | killed
    link: str = "up"  # up | down (the LAN side of its cable)
    partitioned: bool = False  # cut off by `partition` (a kill also unplugs it, without this flag)
    cgroups: list[str] = field(default_factory=list)  # dockerd's cgroup parents, removed on down

    @classmethod
    def from_dict(cls, d: dict) -> Host:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    # paths
    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.name

    @property
    def docker_sock(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def shoal_sock(self) -> Path:
        return self.dir / "shoal.sock"

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST for the host's shoald."""
        return f"unix://{self.shoal_sock}"

    @property
    def engine_host(self) -> str:
        """DOCKER_HOST for the host's dockerd."""
        return f"unix://{self.docker_sock}"

    @property
    def dockerd_log(self) -> Path:
        return self.dir / "dockerd.log"

    @property
    def shoald_log(self) -> Path:
        return self.dir / "shoald.log"

    @property
    def holder_log(self) -> Path:
        return self.dir / "holder.log"

    @property
    def track_cgroup(self) -> Path | None:
        return TRACK_CGROUP / self.name if TRACK_CGROUP.parent.is_dir() else None

    @property
    def status(self) -> str:
        """running | stopped | killed | partitioned (running with its LAN link down)."""
        if self.state == "running" and self.partitioned:
            return "partitioned"
        return self.state

    def enter(self, *cmd: str, wd: str = "/") -> list[str]:
        """argv running cmd inside the host (its mount, UTS and network namespaces)."""
        if not self.alive(self.holder):
            raise LabError(f"host {self.name}: its namespace holder (pid {self.holder}) is gone; "
                           "run `shoal lab down` and `shoal lab up` again")
        return ["nsenter", "-t", str(self.holder), "-m", "-u", "-n", f"--wd={wd}", "--", *cmd]

    def pids(self) -> set[int]:
        """Every live process of the host: its tracking cgroup (containers too) and its netns."""
        pids = cgroup_pids(self.track_cgroup) | netns_pids(self.netns)
        pids.discard(os.getpid())
        return {p for p in pids if alive(p)}

    def alive(self, pid: int | None) -> bool:
        """Whether pid is alive and still this host's (a recorded pid may have been reused since)."""
        if not alive(pid):
            return False
        with contextlib.suppress(OSError):
            ns, mine = os.stat(f"/proc/{pid}/ns/net"), os.stat(NETNS_DIR / self.netns)
            if (ns.st_dev, ns.st_ino) == (mine.st_dev, mine.st_ino):
                return True
        with contextlib.suppress(OSError):
            return f"/shoal-lab/{self.name}" in Path(f"/proc/{pid}/cgroup").read_text()
        return False


def holder_script(host: Host) -> str:
    """Shell run by the holder: make the namespaces look like a machine of their own, then sleep."""
    aside = host.dir / ".cgroup-aside"
    etc_docker = host.dir / "etc-docker"
    return f"""set -e
hostname {host.name}
mount --rbind /sys/fs/cgroup {aside}
umount -l /sys
mount -t sysfs sysfs /sys
mount --rbind {aside} /sys/fs/cgroup
umount -l {aside}
awk '$2 ~ "^/run/" || $2 ~ "^/var/lib/docker/" {{print $2}}' /proc/self/mounts | sort -r | \
  while read -r m; do umount -l "$m" 2>/dev/null || true; done
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /etc/docker
mount --bind {etc_docker} /etc/docker
mount --bind {host.dir / "resolv.conf"} /etc/resolv.conf
ip link set lo up
echo ready >&3
exec sleep infinity 3>&- </dev/null >/dev/null 2>&1
"""


def create_holder(host: Host) -> None:
    """Create the host's netns, directories, tracking cgroup and namespace holder."""
    for sub in ("", ".cgroup-aside", "etc-docker", "shoal"):
        (host.dir / sub).mkdir(parents=True, exist_ok=True)
    (host.dir / "daemon.json").write_text("{}\n")
    # the lab has no way out: name lookups (e.g. the registry lookup of `docker service create`) must fail
    # at once rather than wait for an unreachable nameserver
    (host.dir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    if host.track_cgroup is not None:
        host.track_cgroup.mkdir(parents=True, exist_ok=True)
    if not (NETNS_DIR / host.netns).exists():
        run(["ip", "netns", "add", host.netns], what=f"host {host.name}: creating netns")
    argv = ["nsenter", f"--net={NETNS_DIR / host.netns}", "unshare", "-m", "-u", "--propagation", "private",
            "sh", "-c", holder_script(host)]
    host.holder = spawn(argv, log=host.holder_log, env=daemon_env(), cgroup=host.track_cgroup, ready_timeout=20)


def mount_data_disk(host: Host, mib: int) -> None:
    """Make the host's shoald data dir a small file system of its own (tmpfs of mib MiB), so that it can
    be filled; `down` unmounts it with the rest of the lab's root."""
    data = host.dir / "shoal"
    data.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=700", "tmpfs", str(data)],
        what=f"host {host.name}: mounting its data disk")


def reset_run(host: Host) -> None:
    """Give the host an empty /run again (after a power loss nothing in /run survives)."""
    script = ("awk '$2 ~ \"^/run/\" {print $2}' /proc/self/mounts | sort -r | "
              "while read -r m; do umount -l \"$m\" 2>/dev/null || true; done; "
              "umount -l /run; mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run && mkdir -p /run/lock")
    run(host.enter("sh", "-c", script), what=f"host {host.name}: resetting /run")


def start_dockerd(host: Host, timeout: float = 60) -> float:
    """Start the host's dockerd and wait until it answers; returns the seconds it took."""
    spawn_dockerd(host)
    return wait_dockerd(host, timeout)


def spawn_dockerd(host: Host) -> None:
    """Start the host's dockerd without waiting for it (see :func:`wait_dockerd`)."""
    host.docker_sock.unlink(missing_ok=True)
    argv = host.enter("dockerd", "--data-root", str(host.dir / "docker"), "--exec-root", "/run/docker-exec",
                      "--pidfile", "/run/docker.pid", "-H", host.engine_host, "--cgroup-parent",
                      f"shoal-lab-{host.name}", "--config-file", str(host.dir / "daemon.json"),
                      "--log-level", "warn")
    host.dockerd = spawn(argv, log=host.dockerd_log, env=daemon_env(), cgroup=host.track_cgroup)


def wait_dockerd(host: Host, timeout: float = 60) -> float:
    """Wait until the host's dockerd answers; returns the seconds it took."""
    took = wait_socket(host.docker_sock, host.dockerd, f"host {host.name}: dockerd", host.dockerd_log, timeout)
    host.cgroups = sorted(set(host.cgroups) | set(_cgroup_parents(host)))
    return took


def _cgroup_parents(host: Host) -> list[str]:
    """Where dockerd's containers go: ``shoal-lab-<host>`` below dockerd's cgroup in each hierarchy."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{host.dockerd}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            hier = ctrls.replace("name=", "") or "unified"
            if hier == "unified" and not (CGROUP_ROOT / "unified").is_dir():
                base = CGROUP_ROOT
            else:
                base = CGROUP_ROOT / hier
            if base.is_dir():
                out.append(str(base / path.lstrip("/") / f"shoal-lab-{host.name}"))
    return out


def start_shoald(host: Host, extra_flags: Sequence[str], timeout: float = 60) -> float:
    """Start the host's shoald and wait until it answers; returns the seconds it took."""
    host.shoal_sock.unlink(missing_ok=True)
    argv = host.enter(sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(host.dir / "shoal"),
                      "--socket", str(host.shoal_sock), "--engine", str(host.docker_sock), *extra_flags)
    env = daemon_env(PYTHONPATH=os.pathsep.join(p for p in (str(SRC_DIR), os.environ.get("PYTHONPATH")) if p))
    host.shoald = spawn(argv, log=host.shoald_log, env=env, cgroup=host.track_cgroup)
    return wait_socket(host.shoal_sock, host.shoald, f"host {host.name}: shoald", host.shoald_log, timeout)


def kill_all(host: Host, keep_holder: bool, timeout: float = 10) -> list[int]:
    """SIGKILL every process of the host (but the holder if keep_holder) until none is left.

    Returns the pids still alive after timeout (normally none)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = host.pids()
        if keep_holder:
            pids.discard(host.holder)
        if not pids or time.monotonic() > deadline:
            return sorted(pids)
        signal_pids(pids, signal.SIGKILL)
        wait_dead(pids, 1)


def stop_daemons(host: Host) -> list[str]:
    """Stop shoald (SIGTERM, SIGKILL after 15 s) then dockerd (SIGTERM, SIGKILL after 20 s), then
    whatever they left behind (etcd, containerd, shims). Returns notes on what had to be killed."""
    notes = []
    if host.alive(host.shoald) and terminate(host.shoald, 15):
        notes.append(f"shoald {host.shoald} ignored SIGTERM for 15 s, killed")
    if host.alive(host.dockerd) and terminate(host.dockerd, 20):
        notes.append(f"dockerd {host.dockerd} ignored SIGTERM for 20 s, killed")
    left = host.pids() - {host.holder}
    if left:
        signal_pids(left, signal.SIGTERM)
        still = wait_dead(left, 5)
        if still:
            notes.append(f"killed leftover processes {still}")
        kill_all(host, keep_holder=True)
    host.shoald = host.dockerd = 0
    return notes
