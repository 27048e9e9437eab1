"""``shoal lab``: hosts are separate machines as far as Docker can tell, share a LAN, and the fault
commands do what they say. One lab for the module (no swarm, so this does not depend on join), always
torn down; the last test checks that ``down`` leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.lab.hosts import LAB_ROOT, NETNS_DIR, TRACK_CGROUP, alive, find_cgroups, ping_socket
from shoal.lab.lab import Lab, down, lab_exists

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
IMAGES = ("shoal/demo-web:latest", "shoal/demo-busybox:latest")
SHOAL = [sys.executable, "-m", "shoal.cli"]
SRC = str(Path(__file__).resolve().parents[2] / "src")
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())"


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def shoal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([*SHOAL, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root", pytrace=False)
    if lab_exists():
        pytest.fail("a lab already exists on this machine (only one at a time); `shoal lab down` removes it",
                    pytrace=False)
    t0 = time.monotonic()
    the_lab = Lab.up(workers=2, swarm=False, out=lambda m: print(m, file=sys.stderr))
    print(f"lab up: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    try:
        yield the_lab
    finally:
        down(out=lambda m: print(m, file=sys.stderr))


def test_hosts_and_addresses(lab: Lab) -> None:
    assert [h.name for h in lab.hosts] == list(HOSTS)
    assert [h.ip for h in lab.hosts] == ["192.168.77.10", "192.168.77.11", "192.168.77.12"]
    assert [lab.status(h) for h in lab.hosts] == ["running"] * 3
    assert Lab.load().hosts == lab.hosts  # the state file says the same
    for h in lab.hosts:
        assert (NETNS_DIR / h.netns).exists()
        assert lab.exec(h, "hostname", check=True).stdout.strip() == h.name
        addrs = lab.exec(h, "ip", "-br", "-4", "addr", "show", "eth0", check=True).stdout
        assert f"{h.ip}/24" in addrs


def test_each_dockerd_is_its_own_machine(lab: Lab) -> None:
    ids = set()
    for h in lab.hosts:
        name, engine_id = lab.engine_docker(h, "info", "--format", "{{.Name}} {{.ID}}").stdout.split()
        assert name == h.name
        ids.add(engine_id)
    assert len(ids) == 3  # own /etc/docker, so own engine IDs
    host_id = lab.engine_docker("manager", "info", "--format", "{{.ID}}").stdout.strip()
    machine = subprocess.run(["docker", "-H", "unix:///var/run/docker.sock", "info", "--format", "{{.ID}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert host_id != machine


def test_images_loaded_everywhere(lab: Lab) -> None:
    for h in lab.hosts:
        for image in IMAGES:
            lab.engine_docker(h, "image", "inspect", "--format", "{{.Id}}", image)


def test_lab_load(lab: Lab, tmp_path: Path) -> None:
    """`shoal lab load IMAGE...`: images from the machine's engine, or tar files, appear on every host."""
    machine = ["docker", "-H", "unix:///var/run/docker.sock"]
    from_engine, from_tar = "shoal/lab-load-probe:engine", "shoal/lab-load-probe:tar"
    tar = tmp_path / "probe.tar"
    for tag in (from_engine, from_tar):
        subprocess.run([*machine, "tag", IMAGES[1], tag], check=True, capture_output=True)
    try:
        image_id = subprocess.run([*machine, "image", "inspect", "--format", "{{.Id}}", from_engine], check=True,
                                  capture_output=True, text=True).stdout.strip()
        subprocess.run([*machine, "save", "-o", str(tar), from_tar], check=True, capture_output=True)
        for h in lab.hosts:
            assert lab.engine_docker(h, "image", "inspect", from_engine, check=False).returncode != 0
        cp = shoal_cli("lab", "load", from_engine, str(tar))
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith(f"loaded {from_engine}, {tar} into manager, worker1, worker2 in "), cp.stdout
        for h in lab.hosts:
            for tag in (from_engine, from_tar):
                assert lab.engine_docker(h, "image", "inspect", "--format", "{{.Id}}", tag).stdout.strip() == image_id
            lab.engine_docker(h, "rmi", from_engine, from_tar)
        cp = shoal_cli("lab", "load", "shoal/no-such-image:nope")
        assert cp.returncode == 1 and "shoal/no-such-image:nope not found on the machine's engine" in cp.stderr
    finally:
        subprocess.run([*machine, "rmi", from_engine, from_tar], capture_output=True)


def test_shoald_answers_on_each_host(lab: Lab) -> None:
    for h in lab.hosts:
        assert ping_socket(h.shoal_sock)
        lab.docker(h, "version")


def test_hosts_ping_each_other_over_the_lan(lab: Lab) -> None:
    assert lab.ping("worker1", "192.168.77.10")
    assert lab.ping("manager", "worker2")
    assert lab.ping("worker2", "worker1")
    # and nothing leaves the lab: the LAN's gateway has nowhere to route
    assert not lab.ping("manager", "192.0.2.1")


def test_containers_run_and_publish_on_the_lan(lab: Lab) -> None:
    out = lab.engine_docker("worker1", "run", "--rm", "shoal/demo-busybox:latest", "hostname").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", out)
    lab.engine_docker("worker2", "run", "-d", "--name", "lab-web", "-p", "8080:80", "shoal/demo-web:latest")
    try:
        def fetch() -> str:
            cp = lab.exec("worker1", sys.executable, "-c", FETCH, "http://192.168.77.12:8080/")
            return cp.stdout if cp.returncode == 0 else ""

        assert "Hello from" in wait_for(fetch, 15, "the web container on worker2")
    finally:
        lab.engine_docker("worker2", "rm", "-f", "lab-web", check=False)


def test_partition_and_heal(lab: Lab) -> None:
    lab.partition("worker2")
    try:
        assert lab.status(lab.host("worker2")) == "partitioned"
        assert not lab.ping("worker1", "worker2")
        assert not lab.ping("worker2", "manager")
        assert lab.ping("worker1", "manager")  # the rest of the LAN is fine
        assert ping_socket(lab.host("worker2").docker_sock)  # processes keep running
    finally:
        lab.heal("worker2")
    assert lab.status(lab.host("worker2")) == "running"
    assert wait_for(lambda: lab.ping("worker1", "worker2"), 10, "ping after heal")


def test_kill_and_start(lab: Lab) -> None:
    h = lab.host("worker2")
    lab.engine_docker(h, "run", "-d", "--name", "victim", "shoal/demo-web:latest")
    old = {h.dockerd, h.shoald}
    lab.kill(h)
    assert lab.status(h) == "killed"
    assert not any(alive(p) for p in old)
    assert h.pids() == {h.holder}  # everything but the namespace holder died, containers too
    assert not ping_socket(h.docker_sock) and not ping_socket(h.shoal_sock)
    assert not lab.ping("worker1", "worker2")  # unplugged
    lab.start(h)
    assert lab.status(h) == "running"
    assert lab.engine_docker(h, "info", "--format", "{{.Name}}").stdout.strip() == "worker2"
    assert ping_socket(h.shoal_sock)
    assert wait_for(lambda: lab.ping("worker1", "worker2"), 10, "ping after start")
    state = lab.engine_docker(h, "inspect", "--format", "{{.State.Status}}", "victim").stdout.strip()
    assert state == "exited"
    lab.engine_docker(h, "rm", "-f", "victim")


def test_stop_and_start(lab: Lab) -> None:
    h = lab.host("worker1")
    lab.stop(h)
    assert lab.status(h) == "stopped"
    assert h.pids() == {h.holder}
    assert not ping_socket(h.docker_sock)
    assert lab.ping("manager", "worker1")  # stopped daemons, but the host is still on the LAN
    lab.start(h)
    assert lab.status(h) == "running"
    assert lab.engine_docker(h, "info", "--format", "{{.Name}}").stdout.strip() == "worker1"


def test_cli(lab: Lab) -> None:
    cp = shoal_cli("lab", "ls")
    assert cp.returncode == 0, cp.stderr
    for h in lab.hosts:
        assert re.search(rf"^{h.name}\s+\w+\s+{re.escape(h.ip)}\s+running\s+up\b", cp.stdout, re.M), cp.stdout
    cp = shoal_cli("lab", "env", "worker1")
    assert cp.stdout.strip() == "export DOCKER_HOST=unix:///var/lib/shoal-lab/worker1/shoal.sock"
    cp = shoal_cli("lab", "exec", "worker2", "--", "sh", "-c", 'echo "$(hostname) $DOCKER_HOST"; exit 3')
    assert cp.returncode == 3
    assert cp.stdout.strip() == "worker2 unix:///var/lib/shoal-lab/worker2/shoal.sock"
    cp = shoal_cli("lab", "up")
    assert cp.returncode == 1 and "already exists" in cp.stderr
    cp = shoal_cli("lab", "exec", "nosuchhost", "--", "true")
    assert cp.returncode == 1 and "no host 'nosuchhost'" in cp.stderr


def test_down_leaves_nothing(lab: Lab) -> None:
    pids = set()
    for h in lab.hosts:
        pids |= h.pids()
    assert len(pids) >= 3 * 4  # holder, dockerd, containerd, shoald per host
    netns = [h.netns for h in lab.hosts] + ["shoal-lan"]
    assert not down()
    assert not [p for p in pids if alive(p)]
    assert not [n for n in netns if (NETNS_DIR / n).exists()]
    assert not [n for n in os.listdir(NETNS_DIR) if re.fullmatch(r"shoal-(lan|manager\d*|worker\d+)", n)]
    assert not LAB_ROOT.exists()
    assert not TRACK_CGROUP.exists()
    assert not find_cgroups(lambda n: n.startswith("shoal-lab"))
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(LAB_ROOT) in line]
    assert not lab_exists()
    assert not down()  # idempotent
