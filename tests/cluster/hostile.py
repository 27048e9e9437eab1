"""What a hostile node tries with the certificate and key it holds: run inside a lab host (its network
namespace) as ``python hostile.py <attack> <certificates dir> ...``; prints one JSON line saying what
came back. Every attack goes through the same cluster-port client code (or plain TLS) an attacker
would use; the test then checks that it was refused and that nothing changed."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path

import aiohttp

from shoal.cluster.client import ClusterClient, SessionRejected
from shoal.cluster.messages import (
    Ack,
    Hello,
    Nack,
    Refused,
    RenewAnswer,
    RenewRequest,
    RoleAnswer,
    RoleRequest,
    SessionError,
    StatusReport,
    Welcome,
)
from shoal.model.errors import APIError
from shoal.tls.certs import MANAGER_NAME, identity_of, make_csr, new_key
from shoal.tls.contexts import ServerContexts, client_context
from shoal.tls.files import NodeTLS


def client(certs: str) -> ClusterClient:
    tls = NodeTLS(Path(certs))
    return ClusterClient(lambda: client_context(tls))


async def api_write(certs: str, manager: str) -> dict:
    """An Engine-API write through the managers' forwarding endpoint."""
    answer = await client(certs).forward(manager, "POST", "/services/create", json.dumps(
        {"Name": "hostile", "TaskTemplate": {"ContainerSpec": {"Image": "shoal/demo-busybox:latest"}}}).encode(),
        {"Content-Type": "application/json"})
    return {"status": answer.status, "body": answer.body.decode(errors="replace")}


async def spoof_status(certs: str, manager: str, task_id: str) -> dict:
    """A session of this node reporting another node's task as failed."""
    try:
        async with client(certs).session(manager) as sock:
            await sock.send(Hello(description={}, addr=""))
            first = await sock.receive(timeout=10)
            if not isinstance(first, Welcome):
                return {"answer": type(first).__name__}
            await sock.send(StatusReport(id=task_id, seq=1, status={
                "State": "failed", "Message": "hostile", "Err": "spoofed by another node",
                "Timestamp": "2030-01-01T00:00:00Z"}))
            while True:  # the manager's other messages (assignments, maps) until the answer to seq 1
                try:
                    msg = await sock.receive(timeout=10)
                except TimeoutError:
                    return {"answer": "no answer"}
                if isinstance(msg, Refused) and msg.seq == 1:
                    return {"answer": "Refused", "message": msg.message}
                if msg is None or isinstance(msg, Ack | Nack | SessionError):
                    return {"answer": type(msg).__name__ if msg else "closed"}
    except SessionRejected as e:
        return {"answer": "rejected", "message": str(e)}


async def renew(certs: str, manager: str) -> dict:
    try:
        answer = await client(certs).request(manager, RenewRequest(csr=make_csr(new_key()).decode()), RenewAnswer)
        return {"answer": "renewed", "role": answer.role}
    except APIError as e:
        return {"answer": "refused", "status": e.status, "message": e.message}


async def ask_manager_role(certs: str, manager: str, own_addr: str) -> dict:
    """Ask the leader for what a promoted node gets: a manager certificate, the managers' keys, an etcd
    member."""
    req = RoleRequest(csr=make_csr(new_key()).decode(), peer_url=f"https://{own_addr}:2380",
                      cluster_addr=f"{own_addr}:2377")
    try:
        answer = await client(certs).request(manager, req, RoleAnswer)
    except APIError as e:
        return {"answer": "refused", "status": e.status, "message": e.message}
    return {"answer": "role", "role": answer.role, "cert_role": identity_of(answer.cert.encode())[1],
            "keys": sorted(answer.keys)}


async def session(certs: str, manager: str) -> dict:
    """An agent's session to ``manager`` (which may be a node posing as one)."""
    try:
        async with client(certs).session(manager) as sock:
            await sock.send(Hello(description={}, addr=""))
            return {"answer": type(await sock.receive(timeout=5)).__name__}
    except SessionRejected as e:
        return {"answer": "rejected", "message": str(e)}
    except aiohttp.ClientConnectorCertificateError as e:
        return {"answer": "certificate refused", "message": str(e.certificate_error)}
    except (aiohttp.ClientError, OSError) as e:
        return {"answer": "failed", "message": f"{type(e).__name__}: {e}"}


async def pose_as_manager(certs: str, listen: str, seconds: str) -> dict:
    """Serve a cluster port with this node's certificate, accepting any agent, for a while."""
    host, port = listen.rsplit(":", 1)
    served = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        writer.close()

    server = await asyncio.start_server(handle, host, int(port), ssl=ServerContexts(NodeTLS(Path(certs))).context)
    print(json.dumps({"listening": listen}), flush=True)
    async with server:
        await asyncio.sleep(float(seconds))
    return {"served": len(served)}


async def etcd_peer(cert: str, key: str, peer: str) -> dict:
    """Present a certificate to a manager's etcd peer port, as a peer would."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the attacker does not care who answers
    ctx.load_cert_chain(cert, key)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(f"https://{peer}/members", ssl=ctx) as resp:
            return {"answer": "answered", "status": resp.status, "body": (await resp.text())[:4000]}
    except (aiohttp.ClientError, OSError) as e:
        return {"answer": "refused", "message": f"{type(e).__name__}: {e}"}


ATTACKS = {"api-write": api_write, "spoof-status": spoof_status, "renew": renew, "session": session,
           "ask-manager-role": ask_manager_role,
           "pose-as-manager": pose_as_manager, "etcd-peer": etcd_peer}

if __name__ == "__main__":
    assert MANAGER_NAME == "swarm-manager"
    print(json.dumps(asyncio.run(ATTACKS[sys.argv[1]](*sys.argv[2:]))), flush=True)
