"""The rest of the swarm API as the docker CLI (v28 and v20) uses it: swarm update settings, join-token
rotation, `docker info`'s Swarm section, autolock (unlock, unlock-key rotation), service rollback,
update --force, distribution inspect, API versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import DOCKER_V20, DOCKER_V28, free_port, wait_for

pytestmark = pytest.mark.integration

IMAGE = "shoal/demo-web:latest"
LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" '
          "to unlock it.")


def swarm_section(d, cli: str = DOCKER_V28) -> str:
    out = d.docker("info", cli=cli).stdout
    return out.split(" Swarm: ", 1)[1].split(" Runtimes:", 1)[0]


@pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])
def test_info_swarm_section_like_dockers(shoald, cli):
    text = swarm_section(shoald, cli)
    node_id = shoald.request("GET", "/info")[2]["Swarm"]["NodeID"]
    for line in (f"NodeID: {node_id}", "Is Manager: true", "Managers: 1", "Nodes: 1", "Data Path Port: 4789",
                 "Task History Retention Limit: 5", "Snapshot Interval: 10000", "Heartbeat Tick: 1",
                 "Election Tick: 10", "Heartbeat Period: 5 seconds", "Expiry Duration: 3 months",
                 "Autolock Managers: false", "Root Rotation In Progress: false", "Manager Addresses:"):
        assert line in text, f"{line!r} not in docker info's Swarm section:\n{text}"
    sw = shoald.request("GET", "/info")[2]["Swarm"]
    assert sw["LocalNodeState"] == "active" and sw["ControlAvailable"] is True
    assert [m["NodeID"] for m in sw["RemoteManagers"]] == [node_id]
    assert sw["RemoteManagers"][0]["Addr"].endswith(":2377") and sw["NodeAddr"]
    assert "JoinTokens" not in sw["Cluster"] and sw["Cluster"]["Spec"]["Raft"]["ElectionTick"] == 10


def test_swarm_update_settings_and_token_rotation(shoald):
    d = shoald
    old = d.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    mgr = d.docker("swarm", "join-token", "-q", "manager").stdout.strip()
    out = d.docker("swarm", "join-token", "--rotate", "worker").stdout
    assert "Successfully rotated worker join token." in out
    new = d.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    assert new != old and new.startswith("SWMTKN-1-") and new.split("-")[2] == old.split("-")[2]
    assert d.docker("swarm", "join-token", "-q", "manager").stdout.strip() == mgr

    d.docker("swarm", "update", "--task-history-limit", "3", "--dispatcher-heartbeat", "7s", "--cert-expiry", "48h")
    spec = d.request("GET", "/swarm")[2]["Spec"]
    assert spec["Orchestration"]["TaskHistoryRetentionLimit"] == 3
    assert spec["Dispatcher"]["HeartbeatPeriod"] == 7 * 10**9
    assert spec["CAConfig"]["NodeCertExpiry"] == 48 * 3600 * 10**9
    assert spec["Raft"]["ElectionTick"] == 10  # the CLI sends the whole spec back
    text = swarm_section(d, DOCKER_V20)
    assert "Task History Retention Limit: 3" in text and "Heartbeat Period: 7 seconds" in text
    assert "Expiry Duration: 2 days" in text
    # back to the defaults for the other tests of this module
    d.docker("swarm", "update", "--task-history-limit", "5", "--dispatcher-heartbeat", "5s", "--cert-expiry", "2160h")

    cp = d.docker("swarm", "update", "--dispatcher-heartbeat", "5s", check=False, cli=DOCKER_V20)
    assert cp.returncode == 0
    status, _, body = d.request("POST", "/swarm/update", {})
    assert status == 400 and "invalid swarm version" in body["message"]
    status, _, body = d.request("POST", "/swarm/update?version=1", d.request("GET", "/swarm")[2]["Spec"])
    assert (status, body["message"]) == (400, "rpc error: code = Unknown desc = update out of sequence")


@pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])
def test_swarm_ca(shoald, cli):
    root = shoald.request("GET", "/swarm")[2]["TLSInfo"]["TrustRoot"].strip()
    out = shoald.docker("swarm", "ca", cli=cli).stdout
    assert out.strip() == root and root.startswith("-----BEGIN CERTIFICATE-----")  # rotation: test_pki.py


def test_unlock_when_not_locked(shoald):
    status, _, body = shoald.request("POST", "/swarm/unlock", {"UnlockKey": "SWMKEY-1-abc"})
    assert (status, body["message"]) == (409, "swarm is not locked")
    status, _, body = shoald.request("GET", "/swarm/unlockkey")
    assert (status, body) == (200, {"UnlockKey": ""})
    cp = shoald.docker("swarm", "unlock-key", check=False)
    assert cp.returncode != 0 and "no unlock key is set" in cp.stderr
    cp = shoald.docker("swarm", "unlock", check=False)
    assert cp.returncode != 0 and "swarm is not locked" in cp.stderr


def _plain_keys(data: Path) -> list[str]:
    """Files under the data dir (not following links) that hold a private key in the clear."""
    out = []
    for p in data.rglob("*"):
        if p.is_file() and not p.is_symlink() and "etcd" not in p.relative_to(data).parts[:1]:
            if b"PRIVATE KEY" in p.read_bytes():
                out.append(str(p.relative_to(data)))
    return out


def _unlock(d, key: str, cli: str = DOCKER_V28) -> subprocess.CompletedProcess:
    return subprocess.run([cli, "swarm", "unlock"], input=key + "\n", capture_output=True, text=True,
                          env={**os.environ, "DOCKER_HOST": d.host}, timeout=120)


def _restart(d) -> None:
    d.kill(signal.SIGTERM)
    d.start()


def test_autolock(fresh_shoald):
    d = fresh_shoald
    port = free_port()  # the module's shoald has 2377
    out = d.docker("swarm", "init", "--autolock", "--listen-addr", f"127.0.0.1:{port}",
                   "--advertise-addr", f"127.0.0.1:{port}").stdout
    key = d.docker("swarm", "unlock-key", "-q").stdout.strip()
    assert key.startswith("SWMKEY-1-") and key in out
    assert "docker swarm unlock" in out
    assert d.request("GET", "/swarm")[2]["Spec"]["EncryptionConfig"]["AutoLockManagers"] is True
    assert "ShoalUnlockKey" not in json.dumps(d.request("GET", "/swarm")[2])
    d.docker("service", "create", "-d", "--name", "locked-web", IMAGE)
    wait_for(lambda: not _plain_keys(d.data), 10, what="the manager keys sealed on disk")

    _restart(d)
    assert d.request("GET", "/_ping")[1]["Swarm"] == "locked"
    sw = d.request("GET", "/info")[2]["Swarm"]
    assert (sw["LocalNodeState"], sw["ControlAvailable"], sw["Error"]) == ("locked", False, LOCKED)
    assert " Swarm: locked" in d.docker("info").stdout
    cp = d.docker("service", "ls", check=False)
    assert cp.returncode == 1 and cp.stderr.strip() == f"Error response from daemon: {LOCKED}"
    assert not _plain_keys(d.data)
    cp = _unlock(d, "SWMKEY-1-" + "A" * 43)
    assert "swarm could not be unlocked: invalid key provided" in cp.stderr
    status, _, body = d.request("POST", "/swarm/unlock", {"UnlockKey": "nonsense"})
    assert (status, body["message"]) == (400, "invalid key string")
    status, _, body = d.request("POST", "/swarm/leave")
    assert status == 503 and "Swarm is encrypted and locked" in body["message"]
    cp = _unlock(d, key)
    assert cp.returncode == 0, cp.stderr
    assert d.request("GET", "/info")[2]["Swarm"]["LocalNodeState"] == "active"
    assert "locked-web" in d.docker("service", "ls").stdout

    out = d.docker("swarm", "unlock-key", "--rotate").stdout
    assert "Successfully rotated manager unlock key." in out
    new = d.docker("swarm", "unlock-key", "-q").stdout.strip()
    assert new != key and new in out
    wait_for(lambda: not _plain_keys(d.data), 10, what="keys resealed")
    _restart(d)
    assert "invalid key provided" in _unlock(d, key, DOCKER_V20).stderr
    cp = _unlock(d, new, DOCKER_V20)
    assert cp.returncode == 0, cp.stderr
    wait_for(lambda: "1/1" in d.docker("service", "ls").stdout, 30, what="locked-web running after unlock")

    out = d.docker("swarm", "update", "--autolock=false").stdout
    assert "Swarm updated." in out
    assert d.request("GET", "/swarm/unlockkey")[2] == {"UnlockKey": ""}
    wait_for(lambda: _plain_keys(d.data), 10, what="the keys back as plain files")
    _restart(d)
    wait_for(lambda: d.request("GET", "/info")[2]["Swarm"]["LocalNodeState"] == "active", 60,
             what="an unlocked manager to start by itself")
    out = d.docker("swarm", "update", "--autolock=true").stdout
    assert "SWMKEY-1-" in out and "docker swarm unlock" in out


def test_service_rollback(shoald):
    d = shoald
    d.docker("service", "create", "--name", "rb", "--replicas", "2", "--env", "V=1", IMAGE)
    cp = d.docker("service", "rollback", "rb", check=False)
    assert cp.returncode != 0
    assert "does not have a previous spec" in cp.stderr and "FailedPrecondition" in cp.stderr
    d.docker("service", "update", "--env-add", "V=2", "rb")
    cp = d.docker("service", "rollback", "rb")
    assert "rollback: manually requested rollback" in cp.stdout and "converged" in cp.stdout
    svc = d.request("GET", "/services/rb")[2]
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["V=1"]
    assert svc["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["V=2"]
    assert svc["UpdateStatus"]["State"] == "rollback_completed"
    assert svc["UpdateStatus"]["Message"] == "rollback completed"
    running = d.docker("service", "ps", "-q", "--filter", "desired-state=running", "rb").stdout.split()
    envs = [d.request("GET", f"/tasks/{t}")[2]["Spec"]["ContainerSpec"]["Env"] for t in running]
    assert envs == [["V=1"], ["V=1"]]
    # v20's `service update --rollback` uses the same API
    d.docker("service", "update", "--rollback", "rb", cli=DOCKER_V20)
    assert d.request("GET", "/services/rb")[2]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["V=2"]
    d.docker("service", "rm", "rb")


@pytest.mark.field("TaskSpec.ForceUpdate", how="honoured")
@pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])
def test_service_update_force_replaces_tasks(shoald, cli):
    d = shoald
    name = f"force-{'28' if cli == DOCKER_V28 else '20'}"
    d.docker("service", "create", "--name", name, "--replicas", "2", IMAGE, cli=cli)
    before = set(d.docker("service", "ps", "-q", "--filter", "desired-state=running", name).stdout.split())
    spec = d.request("GET", f"/services/{name}")[2]["Spec"]
    d.docker("service", "update", "--force", name, cli=cli)
    after = set(d.docker("service", "ps", "-q", "--filter", "desired-state=running", name).stdout.split())
    assert len(after) == 2 and not (before & after)
    new_spec = d.request("GET", f"/services/{name}")[2]["Spec"]
    assert new_spec["TaskTemplate"]["ForceUpdate"] == spec["TaskTemplate"].get("ForceUpdate", 0) + 1
    d.docker("service", "rm", name)


def test_distribution_inspect_without_registry(shoald):
    status, headers, body = shoald.request("GET", "/distribution/shoal/demo-web:latest/json")
    assert status >= 400 and headers["Content-Type"] == "application/json"
    assert "registry" in body["message"] or "no such host" in body["message"]
    # the CLI resolves the image first, warns, and still creates the service from the local image
    cp = shoald.docker("service", "create", "-d", "--name", "dist", IMAGE)
    assert "could not be accessed on a registry to record" in cp.stderr
    shoald.docker("service", "rm", "dist")


def test_api_versions(shoald):
    for minor in range(41, 51):
        for path in ("/services", "/nodes", "/swarm", "/tasks", "/info", "/version"):
            status, _, _ = shoald.request("GET", f"/v1.{minor}{path}")
            assert status == 200, f"/v1.{minor}{path}"
    status, _, body = shoald.request("GET", "/v1.51/services")
    assert status == 400 and "Maximum supported API version is 1.50" in body["message"]
    status, _, body = shoald.request("GET", "/v1.12/services")
    assert status == 400 and "is too old" in body["message"]
    status, headers, _ = shoald.request("GET", "/_ping")
    assert (1, 41) <= tuple(map(int, headers["Api-Version"].split("."))) <= (1, 50)
    doc = shoald.request("GET", "/shoal/openapi.json")[2]
    assert doc["openapi"].startswith("3.1") and "/services/{id}/update" in doc["paths"]
