"""Shared helpers for the end-to-end benchmarks: start/stop a throwaway shoald, talk to the local
dockerd's API, poll a service's containers.

Not a benchmark itself (``make bench`` skips ``benchmarks/_*.py``); running it directly does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the unix_http helper

import unix_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENGINE_SOCK = "/var/run/docker.sock"
DOCKER = "docker"
SERVICE_LABEL = "com.docker.swarm.service.name"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(sock: str, method: str, path: str, body: object = None, timeout: float = 30) -> tuple[int, object]:
    """One HTTP request over a unix socket; returns (status, parsed JSON or text)."""
    status, _headers, parsed = unix_http.request(sock, method, path, body, timeout=timeout)
    return status, parsed


def service_containers(service: str, running_only: bool = True) -> list[dict]:
    """The engine's containers labelled as tasks of ``service`` (running ones, or all)."""
    filters: dict[str, list[str]] = {"label": [f"{SERVICE_LABEL}={service}"]}
    if running_only:
        filters["status"] = ["running"]
    q = urllib.parse.urlencode({"all": "0" if running_only else "1", "filters": json.dumps(filters)})
    status, body = request(ENGINE_SOCK, "GET", f"/containers/json?{q}")
    if status != 200 or not isinstance(body, list):
        raise RuntimeError(f"engine container list failed: {status} {body!r}")
    return body


def wait_count(service: str, want: int, running_only: bool, timeout: float, interval: float = 0.05) -> float:
    """Poll the engine every ``interval`` s until ``service`` has exactly ``want`` containers (running
    ones, or any state); returns the monotonic time it was first seen."""
    deadline = time.monotonic() + timeout
    n = -1
    while True:
        n = len(service_containers(service, running_only))
        t = time.monotonic()
        if n == want:
            return t
        if t > deadline:
            kind = "running" if running_only else "total"
            raise TimeoutError(f"service {service}: {n} {kind} containers after {timeout:.0f}s, want {want}")
        time.sleep(interval)


def docker(host: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the docker CLI against ``host`` (a ``unix://`` URL)."""
    env = {**os.environ, "DOCKER_HOST": host}
    cp = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def _is_etcd(pid: int) -> bool:
    try:
        return b"etcd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Shoald:
    """A shoald with its own temp data dir, socket and free etcd ports; use as a context manager."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="shoal-bench-")
        root = Path(self._tmp.name)
        self.data = root / "data"
        self.sock = str(root / "shoal.sock")
        self.log = root / "shoald.log"
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self._etcd_pid: int | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Shoald:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(self.data), "--socket", self.sock,
                 "--etcd-client-port", str(self.client_port), "--etcd-peer-port", str(self.peer_port)],
                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if request(self.sock, "GET", "/_ping", timeout=5)[0] == 200:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"shoald did not come up; log:\n{self.log.read_text()[-3000:]}")

    def swarm_init(self) -> None:
        docker(self.host, "swarm", "init")
        self.etcd_pid()  # remember it: leaving deletes <data-dir>/etcd

    def etcd_pid(self) -> int | None:
        """The PID of shoald's etcd member (from <data-dir>/etcd/etcd.pid), if it is alive."""
        with contextlib.suppress(OSError, ValueError):
            self._etcd_pid = int((self.data / "etcd" / "etcd.pid").read_text())
        pid = self._etcd_pid
        return pid if pid and _is_etcd(pid) else None

    def stop(self) -> None:
        """Leave the swarm (force), SIGTERM shoald, SIGKILL its etcd if still alive, remove the temp dir."""
        etcd = self.etcd_pid()
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                request(self.sock, "POST", "/swarm/leave?force=1", timeout=120)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if etcd and _is_etcd(etcd):
            with contextlib.suppress(OSError):
                os.kill(etcd, signal.SIGKILL)
        self._tmp.cleanup()


if __name__ == "__main__":
    pass  # helpers only
