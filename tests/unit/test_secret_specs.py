"""Secrets and configs without a daemon: spec validation (Docker's messages), references, sealing, and
what the dispatcher hands a node."""

from __future__ import annotations

import base64

import pytest

from shoal.api.decode import decode
from shoal.manager.secrets import Sealer, SealError, check_refs, needed, new_data_key, payload, reveal, users_of
from shoal.model.errors import APIError
from shoal.model.ids import new_id, now
from shoal.model.secrets import (
    check_update,
    decode_base64,
    file_owner,
    read_update,
    target_path,
    validate_refs,
    validate_spec,
)
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def message(exc: pytest.ExceptionInfo) -> tuple[int, str]:
    return exc.value.status, exc.value.message


# -- base64 as Go's encoding/json reads []byte ------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", b"hello world!", bytes(range(256)) * 3])
def test_base64_round_trip(data):
    assert decode_base64(b64(data)) == data


def test_base64_skips_newlines():
    assert decode_base64("aGVs\nbG8=\r\n") == b"hello"


@pytest.mark.parametrize(("text", "offset"), [
    ("abc", 0), ("abcdab", 4), ("ab=c", 2), ("a===", 1), ("abcd!", 4), ("aGk=aGk=", 4), ("aG=", 3),
    ("not base64!", 3),
])
def test_base64_errors_name_the_byte(text, offset):
    with pytest.raises(APIError) as e:
        decode_base64(text)
    assert message(e) == (400, f"invalid JSON: illegal base64 data at input byte {offset}")


# -- specs --------------------------------------------------------------------------------------------------

def test_valid_secret_spec_keeps_data_out_of_the_spec():
    spec, data = validate_spec("secrets", {"Name": "db_pass", "Labels": {"a": "b"}, "Data": b64(b"pw")})
    assert spec == {"Name": "db_pass", "Labels": {"a": "b"}} and data == b"pw"


@pytest.mark.parametrize(("kind", "limit"), [("secrets", 500 * 1024), ("configs", 1000 * 1024)])
def test_size_limits(kind, limit):
    validate_spec(kind, {"Name": "x", "Data": b64(b"x" * (limit - 1))})
    word = kind[:-1]
    for size in (limit, 0):
        with pytest.raises(APIError) as e:
            validate_spec(kind, {"Name": "x", "Data": b64(b"x" * size)})
        assert message(e) == (400, f"rpc error: code = InvalidArgument desc = {word} data must be larger than 0 "
                                   f"and less than {limit} bytes")


@pytest.mark.parametrize("name", ["-x", "x-", "a b", "x" * 65, "ü"])
def test_invalid_names(name):
    with pytest.raises(APIError) as e:
        validate_spec("secrets", {"Name": name, "Data": b64(b"v")})
    assert message(e) == (400, "rpc error: code = InvalidArgument desc = invalid name, only 64 [a-zA-Z0-9-_.] "
                               "characters allowed, and the start and end character must be [a-zA-Z0-9]")


def test_name_required_and_valid_names():
    with pytest.raises(APIError) as e:
        validate_spec("configs", {"Data": b64(b"v")})
    assert message(e) == (400, "rpc error: code = InvalidArgument desc = name must be provided")
    for name in ("a", "A.b-c_d9", "x" * 64):
        validate_spec("configs", {"Name": name, "Data": b64(b"v")})


def test_data_of_the_wrong_type():
    with pytest.raises(APIError) as e:
        decode({"Name": "x", "Data": 5}, "SecretSpec")
    assert message(e) == (400, "invalid JSON: json: cannot unmarshal number into Go struct field SecretSpec.Data "
                               "of type []uint8")


def test_only_labels_may_change():
    current = {"Spec": {"Name": "s", "Labels": {}}}
    def check(body: dict) -> dict:
        return check_update(current, read_update("secrets", body), b"old")

    assert check({"Name": "s", "Labels": {"k": "v"}}) == {"k": "v"}
    assert check({"Name": "s", "Data": b64(b"old")}) == {}
    assert check({"Name": "s", "Data": ""}) == {}  # empty data is "not given" once it crossed gRPC
    for body in ({"Name": "t"}, {"Name": "s", "Data": b64(b"new")}):
        with pytest.raises(APIError) as e:
            check(body)
        assert message(e) == (400, "rpc error: code = InvalidArgument desc = only updates to Labels are allowed")


# -- references ------------------------------------------------------------------------------------------

def service_spec(secrets=(), configs=()) -> dict:
    return {"Name": "svc", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Secrets": list(secrets),
                                                              "Configs": list(configs)}}}


def sref(sid: str, name: str, target: str | None = None) -> dict:
    return {"SecretID": sid, "SecretName": name,
            "File": {"Name": target or name, "UID": "0", "GID": "0", "Mode": 0o444}}


@pytest.mark.parametrize(("refs", "desc"), [
    ([{"SecretName": "a", "File": {"Name": "a"}}], "malformed secret reference"),
    ([{"SecretID": "1", "SecretName": "a"}], "malformed secret reference, no target provided"),
    ([{"SecretID": "1", "SecretName": "a", "File": {"Name": ""}}],
     "malformed file secret reference, invalid target file name provided"),
    ([sref("1", "a", "t"), sref("2", "b", "t")], "secret references 'a' and 'b' have a conflicting target: 't'"),
])
def test_malformed_references(refs, desc):
    with pytest.raises(APIError) as e:
        validate_refs(service_spec(secrets=refs))
    assert message(e) == (400, f"rpc error: code = InvalidArgument desc = {desc}")


def test_target_paths_and_owners():
    assert target_path("secrets", "db") == "/run/secrets/db"
    assert target_path("secrets", "/etc/db") == "/etc/db"
    assert target_path("configs", "app.conf") == "/app.conf"
    assert target_path("configs", "/etc/app.conf") == "/etc/app.conf"
    assert file_owner({"UID": "1000", "GID": "50", "Mode": 0o400}) == (1000, 50, 0o400)
    assert file_owner({}) == (0, 0, 0o444)


# -- sealing -----------------------------------------------------------------------------------------------

def test_sealed_values_open_only_with_the_same_key_and_object():
    key = new_data_key()
    sealer = Sealer(key)
    sealed = sealer.seal("secrets", "id1", b"hunter2")
    assert b"hunter2" not in sealed.encode() and base64.b64encode(b"hunter2").decode() not in sealed
    assert sealer.seal("secrets", "id1", b"hunter2") != sealed  # fresh nonce each time
    assert Sealer(key).open("secrets", "id1", sealed) == b"hunter2"  # the same data key
    with pytest.raises(SealError):
        sealer.open("secrets", "id2", sealed)  # moved to another object
    with pytest.raises(SealError):
        Sealer(new_data_key()).open("secrets", "id1", sealed)  # another swarm's key
    assert len(key) == 32 and new_data_key() != key


# -- the store side: references, users, what a node gets ----------------------------------------------------

async def test_refs_users_and_payloads():
    objs = Objects(MemoryStore())
    await objs.start()
    try:
        sealer = Sealer(new_data_key())
        sid, cid = new_id(), new_id()
        await objs.create("secrets", {"ID": sid, "CreatedAt": now(), "UpdatedAt": now(),
                                      "Spec": {"Name": "pw", "Labels": {}},
                                      "Sealed": sealer.seal("secrets", sid, b"s3cret")})
        await objs.create("configs", {"ID": cid, "CreatedAt": now(), "UpdatedAt": now(),
                                      "Spec": {"Name": "conf", "Labels": {}, "Data": b64(b"k=v")}})
        assert reveal(sealer, "secrets", objs.get("secrets", sid)) == b"s3cret"
        assert "s3cret" not in str(objs.get("secrets", sid))

        spec = service_spec([sref(sid, "pw")], [{"ConfigID": cid, "ConfigName": "conf", "File": {"Name": "/c"}}])
        check_refs(objs, spec)
        for bad, desc in ((service_spec([sref("nope", "ghost")]), "secret not found: ghost"),
                          (service_spec([sref("n1", "g1"), sref("n2", "g2", "x")]), "secrets not found: g1, g2"),
                          (service_spec([sref(sid, "wrong-name")]), "secret not found: wrong-name"),
                          (service_spec(configs=[{"ConfigID": "x", "ConfigName": "c", "File": {"Name": "/c"}}]),
                           "config not found: c")):
            with pytest.raises(APIError) as e:
                check_refs(objs, bad)
            assert message(e) == (400, f"rpc error: code = InvalidArgument desc = {desc}")

        await objs.create("services", {"ID": new_id(), "Spec": spec})
        assert users_of(objs, "secrets", sid) == ["svc"] and users_of(objs, "configs", cid) == ["svc"]

        task = {"ID": new_id(), "Spec": spec["TaskTemplate"], "DesiredState": "running",
                "Status": {"State": "assigned"}}
        assert needed([task]) == {"secrets": {sid}, "configs": {cid}}
        assert needed([{**task, "DesiredState": "shutdown"}]) == {"secrets": set(), "configs": set()}
        assert needed([{**task, "Status": {"State": "failed"}}]) == {"secrets": set(), "configs": set()}
        assert payload(objs, sealer, "secrets", sid) == {"ID": sid, "Name": "pw", "Data": b64(b"s3cret")}
        assert payload(objs, sealer, "configs", cid) == {"ID": cid, "Name": "conf", "Data": b64(b"k=v")}
        assert payload(objs, None, "secrets", sid) is None  # no key: nothing leaves this node
        assert payload(objs, sealer, "secrets", "gone") is None
    finally:
        await objs.stop()


def test_empty_bodies_read_as_empty_specs():
    with pytest.raises(APIError) as e:
        validate_spec("secrets", decode(None, "SecretSpec"))
    assert message(e) == (400, "rpc error: code = InvalidArgument desc = name must be provided")
    with pytest.raises(APIError) as e:
        check_update({"Spec": {"Name": "c"}}, read_update("configs", decode(None, "ConfigSpec")), b"x")
    assert message(e) == (400, "rpc error: code = InvalidArgument desc = only updates to Labels are allowed")
    with pytest.raises(APIError) as e:
        decode([1], "ConfigSpec")
    assert message(e) == (400, "invalid JSON: json: cannot unmarshal array into Go value of type swarm.ConfigSpec")


# -- templates (--template-driver golang) -------------------------------------------------------------------

def template_ctx() -> dict:
    from shoal.model.template import context

    task = {"ID": "t1", "ServiceID": "s1", "NodeID": "n1", "Slot": 3,
            "ServiceAnnotations": {"Name": "web", "Labels": {"tier": "front", "a": "b"}}}
    return context(task, {"Hostname": "host1", "Platform": {"Architecture": "x86_64", "OS": "linux"}}, "web.3.t1")


def test_template_fields_and_functions():
    from shoal.model.template import expand

    getters = {"env": {"FOO": "bar"}.get, "secret": lambda t: f"<secret {t}>", "config": lambda t: f"<config {t}>"}
    text = ('{{.Service.Name}}/{{ .Service.ID }} {{.Task.Name}} slot={{.Task.Slot}} {{.Node.Hostname}} '
            '{{.Node.Platform.OS}}-{{.Node.Platform.Architecture}} {{index .Service.Labels "tier"}} '
            '{{env "FOO"}} {{secret "pw"}} {{config "/c"}} {{.Service.Labels}}{{/* a comment */}}')
    assert expand(text, template_ctx(), getters) == (
        "web/s1 web.3.t1 slot=3 host1 linux-x86_64 front bar <secret pw> <config /c> map[a:b tier:front]")
    assert expand("a  {{- .Task.ID -}}  \n b", template_ctx(), getters) == "at1b"


@pytest.mark.parametrize("text", ["{{.Nope}}", "{{.Service.Nope}}", "{{ printf \"%d\" 1 }}", "{{ if .Task }}x{{end}}"])
def test_unsupported_templates_are_refused(text):
    from shoal.model.template import TemplateError, expand

    with pytest.raises(TemplateError):
        expand(text, template_ctx(), {})


def test_wrongly_typed_fields_are_bad_requests():
    for body in ({"Name": "x", "Data": "eA==", "Templating": 5}, {"Name": "x", "Data": "eA==", "Labels": ["a"]}):
        with pytest.raises(APIError) as e:
            decode(body, "ConfigSpec")
        assert e.value.status == 400 and e.value.message.startswith("invalid JSON: json: cannot unmarshal")
    with pytest.raises(APIError) as e:
        decode(service_spec([{"SecretID": "1", "SecretName": "a", "File": {"Name": 5}}]), "ServiceSpec")
    assert e.value.message == ("invalid JSON: json: cannot unmarshal number into Go struct field "
                               "SecretReferenceFileTarget.TaskTemplate.ContainerSpec.Secrets.File.Name of type string")
