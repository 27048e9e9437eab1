"""``--with-registry-auth`` against a real private registry (Debian's docker-registry with htpasswd basic
auth on 127.0.0.1, which the engine reaches over plain HTTP as it does every loopback registry): the
node pulls with the credentials the client sent, which stay sealed in the store and out of every log
and answer; without them the task is rejected as Docker 28 rejects it."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import DOCKER_V28, free_port, ps_rows, running_containers, wait_for

pytestmark = pytest.mark.integration

BUSYBOX = "shoal/demo-busybox:latest"
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
USER = "shoaltester"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A registry on 127.0.0.1 that wants basic auth; ``(address, password)``, stopped afterwards."""
    root = tmp_path_factory.mktemp("registry")
    password = "pw-" + secrets.token_hex(8)
    subprocess.run(["htpasswd", "-Bbc", str(root / "htpasswd"), USER, password], check=True, capture_output=True)
    addr = f"127.0.0.1:{free_port()}"
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {addr}\n  secret: {secrets.token_hex(8)}\n"
        f"auth:\n  htpasswd:\n    realm: shoal-test\n    path: {root / 'htpasswd'}\n")
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://{addr}/v2/", timeout=1)
            except urllib.error.HTTPError as e:
                return e.code == 401
            except OSError:
                return False
            return False
        wait_for(answers, 20, what="the registry asking for credentials")
        yield addr, password
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def cli(shoald, config: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The v28 CLI against shoald, with its own client config (credentials) dir."""
    env = {**os.environ, "DOCKER_HOST": shoald.host, "DOCKER_CONFIG": str(config)}
    cp = subprocess.run([DOCKER_V28, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)
    if check and cp.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def test_with_registry_auth_the_node_pulls_with_the_clients_credentials(shoald, docker_engine, registry, tmp_path):
    addr, password = registry
    ref = f"{addr}/shoal/private:1"
    logged_in, anonymous = tmp_path / "with", tmp_path / "without"
    logged_in.mkdir()
    anonymous.mkdir()
    cli(shoald, logged_in, "login", addr, "-u", USER, "--password-stdin", stdin=password)
    docker_engine.images.get(BUSYBOX).tag(ref)
    try:
        cli(shoald, logged_in, "push", "-q", ref)
        docker_engine.images.remove(ref, noprune=True)  # on the node it must come from the registry
        cp = cli(shoald, anonymous, "pull", ref, check=False)
        assert cp.returncode != 0 and "no basic auth credentials" in cp.stderr  # the registry wants them

        # without credentials (no --with-registry-auth): the node's pull fails, the task is rejected
        cp = cli(shoald, anonymous, "service", "create", "-d", "--name", "nocreds", ref, *LOOP)
        assert f"image {ref} could not be accessed on a registry to record" in cp.stderr
        rows = wait_for(lambda: [r for r in ps_rows(shoald, "nocreds") if r["Error"]] or None, 60,
                        what="the task rejected")
        assert {(r["CurrentState"].split()[0], r["Error"]) for r in rows} == {("Rejected", f"No such image: {ref}")}
        assert not running_containers(docker_engine, "nocreds")
        shoald.docker("service", "rm", "nocreds")

        # with them: the CLI pins the digest with them, the node pulls with them and the task runs
        cli(shoald, logged_in, "service", "create", "-d", "--with-registry-auth", "--name", "withcreds", ref, *LOOP)
        [c] = wait_for(lambda: running_containers(docker_engine, "withcreds") or None, 60,
                       what="the task running from the private image")
        [svc] = json.loads(shoald.docker("service", "inspect", "withcreds").stdout)
        image = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image.startswith(f"{ref}@sha256:") and c.attrs["Config"]["Image"] == image

        # the credentials are nowhere to be read: not in answers, the store's files or shoald's log
        encoded = base64.urlsafe_b64encode(json.dumps(
            {"username": USER, "password": password, "serveraddress": addr}, separators=(",", ":")).encode())
        inspect = shoald.docker("service", "inspect", "withcreds").stdout + shoald.docker(
            "inspect", "--type", "task", c.labels["com.docker.swarm.task.id"]).stdout
        etcd_bytes = b"".join(p.read_bytes() for p in (shoald.data / "etcd").rglob("*") if p.is_file())
        for where, text in (("inspect", inspect.encode()), ("etcd", etcd_bytes), ("log", shoald.log.read_bytes())):
            assert password.encode() not in text and encoded.rstrip(b"=") not in text, where
        assert "RegistryAuth" not in inspect
    finally:
        shoald.docker("service", "rm", "nocreds", "withcreds", check=False)
        wait_for(lambda: not docker_engine.api.containers(
            all=True, filters={"label": "com.docker.swarm.service.name=withcreds"}), 30, what="containers removed")
        for image in docker_engine.images.list(name=f"{addr}/shoal/private"):
            for name in image.tags + image.attrs.get("RepoDigests", []):
                if name.startswith(addr):
                    try:
                        docker_engine.images.remove(name, noprune=True)
                    except docker.errors.APIError:
                        pass

