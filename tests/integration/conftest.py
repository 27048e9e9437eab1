"""Fixtures: a real shoald (with its etcd) beside the machine's real dockerd, driven by the real
docker CLI and docker-py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
import unix_http
from openapi_check import check_record

ROOT = Path(__file__).resolve().parents[2]
SHOAL = [sys.executable, "-m", "shoal.cli"]
DOCKER_V28 = "/usr/local/bin/docker"
DOCKER_V20 = "/usr/bin/docker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shoald:
    """One shoald process with its own data dir, socket and etcd ports."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.extra = list(extra)
        self.data = root / "data"
        self.sock = str(root / "shoal.sock")
        self.log = root / "shoald.log"
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.api_record = root / "api-record.jsonl"  # every JSON answer, checked against the OpenAPI doc
        self._checked = 0

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SHOAL_API_RECORD": str(self.api_record)}
        LIVE.add(self)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*SHOAL, "daemon", "--data-dir", str(self.data), "--socket", self.sock,
                 "--etcd-client-port", str(self.client_port), "--etcd-peer-port", str(self.peer_port),
                 *self.extra],
                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                status, _, _ = self.request("GET", "/_ping")
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"shoald did not come up; log:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def etcd_pid(self) -> int | None:
        try:
            pid = int((self.data / "etcd" / "etcd.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def stop(self) -> None:
        """Leave the swarm (removing task containers), then stop shoald and any etcd it left."""
        if self.proc and self.proc.poll() is None:
            try:
                self.request("POST", "/swarm/leave?force=1", timeout=60)
            except OSError:
                pass
            self.kill(signal.SIGTERM)
        pid = self.etcd_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        LIVE.discard(self)
        self.check_api()

    def check_api(self) -> None:
        """Fail when an answer given since the last check does not match shoal's OpenAPI document."""
        if not self.api_record.exists():
            return
        with open(self.api_record, "rb") as f:
            f.seek(self._checked)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        self._checked += len(data)
        tmp = self.root / "api-record.chunk"
        tmp.write_bytes(data)
        problems = check_record(tmp)
        if problems:
            raise AssertionError("answers that do not match src/shoal/api/openapi.yaml:\n" + "\n".join(problems))

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None,
                timeout: float = 30) -> tuple[int, dict, object]:
        return unix_http.request(self.sock, method, path, body, raw, timeout)

    def docker(self, *args: str, cli: str = DOCKER_V28, check: bool = True, timeout: float = 120,
               ) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": self.host}
        cp = subprocess.run([cli, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
        return cp

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=60)


LIVE: set[Shoald] = set()


@pytest.fixture(autouse=True)
def _check_api_answers() -> Iterator[None]:
    """After each test, every JSON answer the running shoalds gave must match the OpenAPI document."""
    yield
    for d in list(LIVE):
        d.check_api()


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextmanager
def started_shoald(*, init: bool = False) -> Iterator[Shoald]:
    """A running shoald with its own temporary data dir (in a swarm of its own with ``init``), stopped
    and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="shoald-") as tmp:
        d = Shoald(Path(tmp))
        d.start()
        try:
            if init:
                d.docker("swarm", "init")
            yield d
        finally:
            d.stop()


@pytest.fixture(scope="module")
def shoald(docker_engine) -> Iterator[Shoald]:
    """A shoald that has run ``docker swarm init``."""
    with started_shoald(init=True) as d:
        yield d


@pytest.fixture
def fresh_shoald(docker_engine) -> Iterator[Shoald]:
    """A shoald that is not in a swarm."""
    with started_shoald() as d:
        yield d


def ps_rows(shoald: Shoald, service: str) -> list[dict]:
    """``docker service ps --no-trunc`` rows as JSON, ``Error`` unquoted (the CLI prints it with Go's %q)."""
    out = shoald.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", service).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [{**row, "Error": json.loads(row["Error"]) if row["Error"] else ""} for row in rows]


def running_containers(engine: docker.DockerClient, service: str, **filters: str) -> list:
    """The service's running containers (retrying when one vanishes while being listed)."""
    for _ in range(20):
        try:
            return engine.containers.list(filters={"label": f"com.docker.swarm.service.name={service}",
                                                   "status": "running", **filters})
        except docker.errors.NotFound:
            time.sleep(0.1)
    raise AssertionError("containers kept vanishing while listed")
