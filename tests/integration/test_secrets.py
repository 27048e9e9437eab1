"""Secrets and configs end to end: the docker CLI (v28 and v20) and docker-py against shoald, tasks that read
their files from a tmpfs, and Docker's refusals of bad input with nothing half-created."""

from __future__ import annotations

import base64
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from conftest import DOCKER_V20, DOCKER_V28, running_containers, wait_for

pytestmark = pytest.mark.integration

IMAGE = "shoal/demo-busybox:latest"
# a task that stops at once on SIGTERM (busybox sleep as PID 1 would wait out the grace period)
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
CLIS = pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])


def names(shoald, kind: str) -> list[str]:
    status, _, body = shoald.request("GET", f"/{kind}")
    assert status == 200
    return sorted(o["Spec"]["Name"] for o in body)


def one_container(engine: docker.DockerClient, service: str):
    return wait_for(lambda: (lambda cs: cs[0] if len(cs) == 1 else None)(running_containers(engine, service)),
                    30, what=f"a running task of {service}")


def sh(container, script: str) -> str:
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    return out.decode()


def file_facts(container, path: str) -> tuple[str, str, str]:
    """(content, 'mode uid gid', the /proc/mounts line of path) inside the container."""
    return (sh(container, f"cat {path}"), sh(container, f"stat -c '%a %u %g' {path}").strip(),
            sh(container, f"grep ' {path} ' /proc/mounts").strip())


@CLIS
def test_secret_cli_lifecycle(shoald, tmp_path, cli):
    name = f"db_pass_{Path(cli).parent.name}"
    src = tmp_path / "pw.txt"
    src.write_text("correct horse battery staple")
    sid = shoald.docker("secret", "create", "--label", "env=prod", name, str(src), cli=cli).stdout.strip()
    assert len(sid) == 25

    ls = shoald.docker("secret", "ls", "--format", "{{.ID}} {{.Name}}", cli=cli).stdout.split("\n")
    assert f"{sid} {name}" in ls
    assert shoald.docker("secret", "ls", "-q", "--filter", "label=env=prod", cli=cli).stdout.split() == [sid]
    assert shoald.docker("secret", "ls", "-q", "--filter", "name=nothing-like-it", cli=cli).stdout.split() == []

    [info] = json.loads(shoald.docker("secret", "inspect", name, cli=cli).stdout)
    assert info["ID"] == sid and info["Spec"] == {"Name": name, "Labels": {"env": "prod"}}  # no Data, ever
    assert info["Version"]["Index"] > 0 and info["CreatedAt"] == info["UpdatedAt"]
    status, _, body = shoald.request("GET", f"/secrets/{sid[:10]}")
    assert status == 200 and "Data" not in body["Spec"]

    dup = shoald.docker("secret", "create", name, str(src), cli=cli, check=False)
    assert dup.returncode != 0
    assert f"rpc error: code = AlreadyExists desc = secret {name} already exists" in dup.stderr

    assert shoald.docker("secret", "rm", name, cli=cli).stdout.strip() == name
    gone = shoald.docker("secret", "inspect", name, cli=cli, check=False)
    assert gone.returncode != 0 and ("not found" in gone.stderr.lower() or "no such secret" in gone.stderr.lower())
    assert name not in names(shoald, "secrets")


@CLIS
def test_config_cli_lifecycle(shoald, tmp_path, cli):
    name = f"app_conf_{Path(cli).parent.name}"
    src = tmp_path / "app.conf"
    src.write_text("listen = 8080\n")
    cid = shoald.docker("config", "create", name, str(src), cli=cli).stdout.strip()
    [info] = json.loads(shoald.docker("config", "inspect", name, cli=cli).stdout)
    assert info["ID"] == cid and info["Spec"]["Name"] == name
    assert base64.b64decode(info["Spec"]["Data"]) == b"listen = 8080\n"  # configs do return their data
    assert "listen = 8080" in shoald.docker("config", "inspect", "--pretty", name, cli=cli).stdout
    assert shoald.docker("config", "ls", "-q", "--filter", f"name={name}", cli=cli).stdout.split() == [cid]
    assert shoald.docker("config", "rm", cid, cli=cli).stdout.strip() == cid
    assert name not in names(shoald, "configs")


def test_bad_input_is_refused_and_creates_nothing(shoald, tmp_path):
    before = {kind: names(shoald, kind) for kind in ("secrets", "configs", "services")}

    status, _, body = shoald.request("POST", "/secrets/create", {"Name": "b64", "Data": "not base64!"})
    assert (status, body["message"]) == (400, "invalid JSON: illegal base64 data at input byte 3")

    big = tmp_path / "big"
    big.write_bytes(b"x" * (500 * 1024))
    cp = shoald.docker("secret", "create", "too_big", str(big), check=False)
    assert cp.returncode != 0 and ("rpc error: code = InvalidArgument desc = secret data must be larger than 0 and "
                                   "less than 512000 bytes") in cp.stderr
    big.write_bytes(b"x" * (1000 * 1024))
    cp = shoald.docker("config", "create", "too_big", str(big), check=False)
    assert cp.returncode != 0 and ("rpc error: code = InvalidArgument desc = config data must be larger than 0 and "
                                   "less than 1024000 bytes") in cp.stderr
    status, _, body = shoald.request("POST", "/configs/create", {"Name": "bad/name", "Data": "eA=="})
    assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = invalid name, only 64 "
                                              "[a-zA-Z0-9-_.] characters allowed, and the start and end character "
                                              "must be [a-zA-Z0-9]")

    # a service naming an unknown secret or config: the CLI finds out itself; the API refuses as Docker does
    cp = shoald.docker("service", "create", "--name", "ghostly", "--secret", "ghost", IMAGE, check=False)
    assert cp.returncode != 0 and "secret not found: ghost" in cp.stderr
    ref = {"SecretID": "0" * 25, "SecretName": "ghost", "File": {"Name": "ghost", "UID": "0", "GID": "0", "Mode": 292}}
    spec = {"Name": "ghostly", "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Secrets": [ref]}}}
    status, _, body = shoald.request("POST", "/services/create", spec)
    assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = secret not found: ghost")
    cref = {"ConfigID": "0" * 25, "ConfigName": "phantom", "File": {"Name": "/p", "UID": "0", "GID": "0", "Mode": 292}}
    spec["TaskTemplate"]["ContainerSpec"] = {"Image": IMAGE, "Configs": [cref]}
    status, _, body = shoald.request("POST", "/services/create", spec)
    assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = config not found: phantom")

    assert {kind: names(shoald, kind) for kind in ("secrets", "configs", "services")} == before


@pytest.mark.field("TaskSpec.ContainerSpec.Secrets.SecretID", "TaskSpec.ContainerSpec.Secrets.SecretName",
                   "TaskSpec.ContainerSpec.Secrets.File.Name", "TaskSpec.ContainerSpec.Secrets.File.UID",
                   "TaskSpec.ContainerSpec.Secrets.File.GID", "TaskSpec.ContainerSpec.Secrets.File.Mode",
                   "TaskSpec.ContainerSpec.Configs.ConfigID", "TaskSpec.ContainerSpec.Configs.ConfigName",
                   "TaskSpec.ContainerSpec.Configs.File.Name", "TaskSpec.ContainerSpec.Configs.File.UID",
                   "TaskSpec.ContainerSpec.Configs.File.GID", "TaskSpec.ContainerSpec.Configs.File.Mode",
                   how="honoured")
def test_task_reads_its_secret_and_config_from_tmpfs(shoald, docker_engine, tmp_path):
    marker = "s3cr3t-" + base64.b32encode(os.urandom(10)).decode()
    (tmp_path / "s").write_text(marker)
    (tmp_path / "c").write_text("mode=fast\n")
    shoald.docker("secret", "create", "api_key", str(tmp_path / "s"))
    shoald.docker("secret", "create", "api_key2", str(tmp_path / "s"))
    shoald.docker("config", "create", "app_cfg", str(tmp_path / "c"))
    shoald.docker("service", "create", "-d", "--name", "reader",
                  "--secret", "api_key",
                  "--secret", "source=api_key2,target=/etc/key,mode=0400,uid=100,gid=101",
                  "--config", "source=app_cfg,target=/etc/app/app.cfg,mode=0440,uid=7",
                  IMAGE, *LOOP)
    c = one_container(docker_engine, "reader")

    content, owner, mount = file_facts(c, "/run/secrets/api_key")
    assert content == marker and owner == "444 0 0"
    assert mount.split()[2] == "tmpfs" and "ro" in mount.split()[3].split(",")
    content, owner, mount = file_facts(c, "/etc/key")
    assert content == marker and owner == "400 100 101" and mount.split()[2] == "tmpfs"
    content, owner, mount = file_facts(c, "/etc/app/app.cfg")
    assert content == "mode=fast\n" and owner == "440 7 0" and mount.split()[2] == "tmpfs"
    assert sh(c, "(echo x > /run/secrets/api_key) 2>/dev/null || echo refused").strip() == "refused"

    # on the node the files live in a tmpfs; in the store the secret is sealed (not on etcd's disk in the clear)
    files = shoald.data / "task-files"
    assert any(line.split()[1] == str(files) and line.split()[2] == "tmpfs"
               for line in Path("/proc/mounts").read_text().splitlines())
    etcd_bytes = b"".join(p.read_bytes() for p in (shoald.data / "etcd").rglob("*") if p.is_file())
    assert marker.encode() not in etcd_bytes and base64.b64encode(marker.encode()) not in etcd_bytes
    [info] = json.loads(shoald.docker("secret", "inspect", "api_key").stdout)
    assert "Data" not in info["Spec"]

    cp = shoald.docker("secret", "rm", "api_key", check=False)
    assert cp.returncode != 0 and ("rpc error: code = InvalidArgument desc = secret 'api_key' is in use by the "
                                   "following service: reader") in cp.stderr
    cp = shoald.docker("config", "rm", "app_cfg", check=False)
    assert cp.returncode != 0 and ("rpc error: code = InvalidArgument desc = config 'app_cfg' is in use by the "
                                   "following service: reader") in cp.stderr

    task_id = c.labels["com.docker.swarm.task.id"]
    assert (files / task_id).is_dir()
    shoald.docker("service", "rm", "reader")
    wait_for(lambda: not docker_engine.api.containers(all=True, filters={"id": c.id}), 30, what="container removed")
    wait_for(lambda: not (files / task_id).exists(), 10, what="the task's files removed")
    shoald.docker("secret", "rm", "api_key", "api_key2")
    shoald.docker("config", "rm", "app_cfg")


def test_v20_cli_service_with_default_targets(shoald, docker_engine, tmp_path):
    (tmp_path / "s").write_text("v20 secret")
    (tmp_path / "c").write_text("v20 config")
    shoald.docker("secret", "create", "old_secret", str(tmp_path / "s"), cli=DOCKER_V20)
    shoald.docker("config", "create", "old_config", str(tmp_path / "c"), cli=DOCKER_V20)
    shoald.docker("service", "create", "-d", "--name", "old", "--secret", "old_secret", "--config", "old_config",
                  IMAGE, *LOOP, cli=DOCKER_V20)
    c = one_container(docker_engine, "old")
    assert file_facts(c, "/run/secrets/old_secret")[:2] == ("v20 secret", "444 0 0")
    assert file_facts(c, "/old_config")[:2] == ("v20 config", "444 0 0")
    spec = json.loads(shoald.docker("service", "inspect", "old", cli=DOCKER_V20).stdout)[0]["Spec"]
    [sref] = spec["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert sref["SecretName"] == "old_secret" and sref["File"]["Name"] == "old_secret"

    # an update that names an unknown secret is refused and changes nothing
    status, _, svc = shoald.request("GET", "/services/old")
    spec = svc["Spec"]
    spec["TaskTemplate"]["ContainerSpec"]["Secrets"].append(
        {"SecretID": "1" * 25, "SecretName": "nope", "File": {"Name": "nope", "UID": "0", "GID": "0", "Mode": 292}})
    status, _, body = shoald.request("POST", f"/services/old/update?version={svc['Version']['Index']}", spec)
    assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = secret not found: nope")
    assert shoald.request("GET", "/services/old")[2]["Version"] == svc["Version"]

    # --secret-add / --config-rm roll the task: the new container has the new file and not the old one
    shoald.docker("service", "update", "-d", "--secret-add", "source=old_secret,target=/again,mode=0440",
                  "--config-rm", "old_config", "old", cli=DOCKER_V20)
    new = wait_for(lambda: (lambda cs: cs[0] if len(cs) == 1 and cs[0].id != c.id else None)(
        running_containers(docker_engine, "old")), 30, what="the updated task")
    assert file_facts(new, "/again")[:2] == ("v20 secret", "440 0 0")
    assert sh(new, "test -e /old_config || echo absent").strip() == "absent"
    shoald.docker("service", "rm", "old", cli=DOCKER_V20)
    label = {"label": "com.docker.swarm.service.name=old"}
    wait_for(lambda: not docker_engine.api.containers(all=True, filters=label), 30, what="containers removed")
    shoald.docker("secret", "rm", "old_secret", cli=DOCKER_V20)
    shoald.docker("config", "rm", "old_config", cli=DOCKER_V20)


def test_docker_py_secrets_and_configs(shoald, docker_engine):
    client = shoald.client()
    try:
        secret = client.secrets.create(name="py_secret", data=b"from docker-py", labels={"via": "py"})
        config = client.configs.create(name="py_config", data=b"cfg from docker-py")
        assert [s.id for s in client.secrets.list(filters={"name": "py_secret"})] == [secret.id]
        got = client.secrets.get(secret.id)
        assert got.name == "py_secret" and got.attrs["Spec"] == {"Name": "py_secret", "Labels": {"via": "py"}}
        got = client.configs.get(config.id)
        assert base64.b64decode(got.attrs["Spec"]["Data"]) == b"cfg from docker-py"

        with pytest.raises(docker.errors.APIError) as err:
            client.secrets.create(name="py_secret", data=b"again")
        assert err.value.status_code == 409

        svc = client.services.create(
            IMAGE, LOOP[:1], args=LOOP[1:], name="pysec",
            secrets=[docker.types.SecretReference(secret.id, "py_secret", filename="/custom/secret", mode=0o400)],
            configs=[docker.types.ConfigReference(config.id, "py_config")])
        c = one_container(docker_engine, "pysec")
        assert file_facts(c, "/custom/secret")[:2] == ("from docker-py", "400 0 0")
        assert file_facts(c, "/py_config")[:2] == ("cfg from docker-py", "444 0 0")

        with pytest.raises(docker.errors.APIError) as err:
            secret.remove()
        assert err.value.status_code == 400 and "is in use by the following service: pysec" in str(err.value)
        svc.remove()
        wait_for(lambda: not docker_engine.api.containers(all=True, filters={"id": c.id}), 30,
                 what="container removed")
        secret.remove()
        config.remove()
        assert client.secrets.list(filters={"name": "py_secret"}) == []
        assert client.configs.list(filters={"name": "py_config"}) == []
        with pytest.raises(docker.errors.NotFound):
            client.secrets.get(secret.id)
    finally:
        client.close()


def test_update_changes_labels_only(shoald):
    status, _, body = shoald.request("POST", "/secrets/create", {"Name": "upd", "Data": "c2VjcmV0"})
    assert status == 201
    sid = body["ID"]
    _, _, info = shoald.request("GET", f"/secrets/{sid}")
    version = info["Version"]["Index"]
    status, _, body = shoald.request("POST", f"/secrets/{sid}/update?version={version}",
                                     {"Name": "upd", "Data": "b3RoZXI="})
    assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = only updates to Labels are "
                                              "allowed")
    status, _, _ = shoald.request("POST", f"/secrets/{sid}/update?version={version}",
                                  {"Name": "upd", "Labels": {"rotated": "no"}})
    assert status == 200
    _, _, info = shoald.request("GET", f"/secrets/{sid}")
    assert info["Spec"] == {"Name": "upd", "Labels": {"rotated": "no"}} and info["Version"]["Index"] > version
    status, _, body = shoald.request("POST", f"/secrets/{sid}/update?version={version}", {"Name": "upd"})
    assert (status, body["message"]) == (400, "rpc error: code = Unknown desc = update out of sequence")
    status, _, _ = shoald.request("DELETE", f"/secrets/{sid}")
    assert status == 204


def test_templated_config(shoald, docker_engine, tmp_path):
    (tmp_path / "t").write_text('{{.Service.Name}} slot={{.Task.Slot}} x={{env "X"}} {{.Task.Name}}')
    shoald.docker("config", "create", "--template-driver", "golang", "tmpl", str(tmp_path / "t"))
    [info] = json.loads(shoald.docker("config", "inspect", "tmpl").stdout)
    assert info["Spec"]["Templating"] == {"Name": "golang"}
    shoald.docker("service", "create", "-d", "--name", "tmpl", "--env", "X=y", "--config", "source=tmpl,target=/t",
                  IMAGE, *LOOP)
    c = one_container(docker_engine, "tmpl")
    task_id = c.labels["com.docker.swarm.task.id"]
    assert sh(c, "cat /t") == f"tmpl slot=1 x=y tmpl.1.{task_id}"
    shoald.docker("service", "rm", "tmpl")
    wait_for(lambda: not docker_engine.api.containers(all=True, filters={"id": c.id}), 30, what="container removed")
    shoald.docker("config", "rm", "tmpl")


def test_rm_racing_a_service_create_never_leaves_a_dangling_reference(shoald):
    """A secret rm and a service create naming the secret, sent at the same time: one of them wins."""
    outcomes = set()
    for i in range(8):
        status, _, body = shoald.request("POST", "/secrets/create", {"Name": f"race{i}", "Data": "eA=="})
        assert status == 201
        ref = {"SecretID": body["ID"], "SecretName": f"race{i}",
               "File": {"Name": "r", "UID": "0", "GID": "0", "Mode": 292}}
        spec = {"Name": f"race{i}", "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Secrets": [ref]},
                                                       "Placement": {"Constraints": ["node.labels.none==1"]}}}
        with ThreadPoolExecutor(2) as pool:
            create = pool.submit(shoald.request, "POST", "/services/create", spec)
            remove = pool.submit(shoald.request, "DELETE", f"/secrets/{body['ID']}")
            (created, _, _), (removed, _, _) = create.result(), remove.result()
        assert (created, removed) in ((201, 400), (400, 204)), (created, removed)
        outcomes.add((created, removed))
        if created == 201:
            assert shoald.request("DELETE", f"/services/race{i}")[0] == 200
            assert shoald.request("DELETE", f"/secrets/{body['ID']}")[0] == 204
    assert not any(n.startswith("race") for n in names(shoald, "secrets"))


def test_restart_keeps_tasks_reading_and_new_tasks_get_files(shoald, docker_engine, tmp_path):
    """Last in the module: it restarts the module's shoald. A SIGTERM stops shoald and detaches its tmpfs;
    the running task keeps its file, and new tasks after the restart get theirs from a new tmpfs."""
    (tmp_path / "s").write_text("survives")
    shoald.docker("secret", "create", "durable_secret", str(tmp_path / "s"))
    shoald.docker("service", "create", "-d", "--name", "keeper", "--secret", "durable_secret", IMAGE, *LOOP)
    first = one_container(docker_engine, "keeper")
    shoald.kill(signal.SIGTERM)
    assert not any(f" {shoald.data / 'task-files'} " in line for line in Path("/proc/mounts").read_text().splitlines())
    shoald.start()
    wait_for(lambda: shoald.request("GET", "/services")[0] == 200, 30, what="the swarm back")
    assert sh(first, "cat /run/secrets/durable_secret") == "survives"
    shoald.docker("service", "scale", "-d", "keeper=2")
    wait_for(lambda: len(running_containers(docker_engine, "keeper")) == 2, 30, what="2 tasks")
    for c in running_containers(docker_engine, "keeper"):
        assert file_facts(c, "/run/secrets/durable_secret")[0] == "survives"
    shoald.docker("service", "rm", "keeper")
    label = {"label": "com.docker.swarm.service.name=keeper"}
    wait_for(lambda: not docker_engine.api.containers(all=True, filters=label), 30, what="containers removed")
    shoald.docker("secret", "rm", "durable_secret")
