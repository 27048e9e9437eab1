"""Issue 12, hardening of inputs: the join body is limited before the token is looked at, a malformed
token is a 400 (never a 500), names are matched whole, and streaming clients that read too slowly are cut
off without slowing the others. In process: the real cluster port (ClusterServer, TLS) on loopback with
the real join check behind it, the real event recorder, and aiohttp's server for the stream writer."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shoal.api import stream
from shoal.cluster.messages import JoinRequest, Message, ProtocolError, StatusReport, decode
from shoal.cluster.server import JOIN_BODY_LIMIT, ClusterServer
from shoal.manager import membership
from shoal.manager.events import SwarmEvents
from shoal.model.errors import APIError
from shoal.model.ids import new_id, now
from shoal.model.network import spec_from_request
from shoal.model.secrets import validate_name
from shoal.model.service import validate_spec
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects
from shoal.tls.certs import Signer, issue_node_cert, key_pem, make_csr, make_root_ca, new_key
from shoal.tls.contexts import ServerContexts
from shoal.tls.files import NodeTLS

TOKEN = "SWMTKN-1-" + "a" * 50 + "-" + "b" * 25


class JoinOnly:
    """A manager's cluster port as far as ``/join`` goes: the real token check, nothing written."""

    node_id = "m" * 25

    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.joined: list[JoinRequest] = []

    def cluster_id(self) -> str:
        return "c" * 25

    async def join(self, req: JoinRequest, addr: str) -> Message:
        self.joined.append(req)
        tokens = {"Worker": TOKEN, "Manager": TOKEN + "m"}  # the cluster's, opened
        return await membership.join(self.objs, None, None, tokens, None, req, addr)  # type: ignore[arg-type]


@pytest.fixture
async def join_port(tmp_path: Path):
    objs = Objects(MemoryStore())
    await objs.start()
    await objs.create("clusters", {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
                                   "JoinTokens": {"Worker": TOKEN, "Manager": TOKEN + "m"}, "Spec": {}})
    ca = make_root_ca()
    tls = NodeTLS(tmp_path / "certificates")
    key = new_key()
    tls.write(ca[0], issue_node_cert(Signer(*ca), make_csr(key), JoinOnly.node_id, "manager", "c" * 25), key_pem(key))
    manager = JoinOnly(objs)
    server = ClusterServer(manager, manager, ServerContexts(tls).context, "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    assert server._runner is not None
    port = server._runner.addresses[0][1]
    try:
        yield manager, f"https://127.0.0.1:{port}/join"
    finally:
        await server.stop()
        await objs.stop()


def _insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_join_bodies_are_limited_before_the_token_is_read(join_port) -> None:
    manager, url = join_port
    async with aiohttp.ClientSession() as http:
        # announced too large: refused before a byte of it is read (the client sends none)
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.split(":")[2].split("/")[0]),
                                                       ssl=_insecure())
        writer.write(b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 67108864\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413")
        writer.close()

        # streamed without a length: cut at the limit
        async def body():
            for _ in range(JOIN_BODY_LIMIT // 65536 + 2):
                yield b" " * 65536

        async with http.post(url, data=body(), ssl=_insecure()) as resp:
            assert resp.status == 413
            assert (await resp.json())["message"] == f"request body exceeds {JOIN_BODY_LIMIT} bytes"
        assert manager.joined == []


async def test_a_malformed_or_non_ascii_token_is_a_400(join_port) -> None:
    manager, url = join_port
    tokens = ["SWMTKN-1-ü-ß", "\u00e9" * 80, TOKEN + "\n", TOKEN[:-1] + "é"]
    async with aiohttp.ClientSession() as http:
        for token in tokens:
            req = JoinRequest(token=token, csr="x")
            async with http.post(url, json=req.to_wire(), ssl=_insecure()) as resp:
                assert resp.status == 400
                assert (await resp.json())["message"] == membership.INVALID_TOKEN
        for bad in ({"type": "join", "token": 12345, "csr": "x"}, {"type": "join", "token": ["a"], "csr": "x"},
                    {"type": "join", "token": TOKEN, "csr": None}):
            async with http.post(url, json=bad, ssl=_insecure()) as resp:
                assert resp.status == 400
                assert (await resp.json())["message"] == "invalid join request"
    assert [r.token for r in manager.joined] == tokens


def test_messages_of_the_wrong_json_type_are_refused() -> None:
    assert decode(b'{"type":"status","id":"t","status":{},"seq":3}') == StatusReport(id="t", status={}, seq=3)
    for raw in (b'{"type":"status","id":1,"status":{},"seq":3}', b'{"type":"status","id":"t","status":[]}',
                b'{"type":"status","id":"t","seq":"3"}', b'{"type":"status","id":"t","seq":true}',
                b'{"type":"welcome","heartbeat":"1"}'):
        with pytest.raises(ProtocolError):
            decode(raw)
    assert decode(b'{"type":"welcome","heartbeat":2}').heartbeat == 2  # an int is a float on the wire


@pytest.mark.parametrize("name", ["web\n", "web\nx", "\nweb", "web "])
def test_names_are_matched_whole(name: str) -> None:
    with pytest.raises(APIError) as e:
        validate_spec({"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}})
    assert e.value.status == 400
    with pytest.raises(APIError) as e:
        spec_from_request({"Name": name, "Driver": "overlay"})
    assert e.value.status == 400
    with pytest.raises(APIError) as e:
        validate_name(name)
    assert e.value.status == 400
    assert validate_spec({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "b"}}})["Name"] == "web"


async def test_a_subscriber_that_falls_behind_is_cut_off_and_the_others_get_everything() -> None:
    rec = SwarmEvents(backlog=8)
    slow, fast = rec.subscribe(), rec.subscribe()
    got: list[dict] = []
    for i in range(20):
        rec.publish({"n": i})  # never waits, whoever reads slowly
        while not fast.empty():
            ev = fast.get_nowait()
            assert ev is not None
            got.append(ev)
    assert [e["n"] for e in got] == list(range(20))
    # the slow one got what fitted, then the end: never a silent gap
    seen = [slow.get_nowait() for _ in range(slow.qsize())]
    assert [e["n"] for e in seen[:-1]] == list(range(8)) and seen[-1] is None
    rec.publish({"n": 20})
    assert slow.empty() and fast.get_nowait() == {"n": 20}


async def test_a_client_that_stops_reading_is_cut_off_and_another_is_not_slowed() -> None:
    outcome: dict[str, object] = {}
    chunk = b"x" * 65536

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        sent = 0
        try:
            for _ in range(int(request.query["chunks"])):
                await stream.write(request, resp, chunk, stall=0.1)
                sent += 1
        except stream.CutOff:
            outcome[request.query["who"]] = sent
            return resp
        outcome[request.query["who"]] = "done"
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        # a client that sends its request and never reads
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /?who=slow&chunks=100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/?who=fast&chunks=64") as r:
            assert len(await r.read()) == 64 * len(chunk)
        assert outcome["fast"] == "done"
        for _ in range(200):
            if "slow" in outcome:
                break
            await asyncio.sleep(0.05)
        assert isinstance(outcome["slow"], int) and outcome["slow"] < 100000
        writer.close()
    finally:
        await runner.cleanup()
