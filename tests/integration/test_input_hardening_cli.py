"""Issue 12's hardening of inputs, against a real shoald: names are matched whole (a trailing newline is
refused by the docker CLI's requests, nothing is made), and the cluster port's ``/join`` refuses an
oversized body before reading it and answers a non-ASCII token with a 400."""

from __future__ import annotations

import json
import socket
import ssl

import pytest

pytestmark = pytest.mark.integration


def _cluster_port(shoald) -> tuple[str, int]:
    managers = json.loads(shoald.docker("info", "--format", "{{json .Swarm.RemoteManagers}}").stdout)
    host, _, port = managers[0]["Addr"].rpartition(":")
    return host, int(port)


def _raw(addr: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` over TLS (no client certificate, as a joining node) and read the answer's head."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(addr, timeout=10) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_names_with_a_trailing_newline_are_refused(shoald, tmp_path) -> None:
    for args in (("service", "create", "--detach", "--name", "web\n", "shoal/demo-web:latest"),
                 ("network", "create", "-d", "overlay", "net\n")):
        cp = shoald.docker(*args, check=False)
        assert cp.returncode != 0 and "Error response from daemon" in cp.stderr, cp.stderr
    (tmp_path / "s").write_text("x")
    cp = shoald.docker("secret", "create", "sec\n", str(tmp_path / "s"), check=False)
    assert cp.returncode != 0 and "Error response from daemon" in cp.stderr, cp.stderr
    names = shoald.docker("service", "ls", "--format", "{{.Name}}").stdout.split()
    names += shoald.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    names += shoald.docker("secret", "ls", "--format", "{{.Name}}").stdout.split()
    assert not {"web", "net", "sec"} & set(names)


def test_join_refuses_oversized_bodies_and_malformed_tokens(shoald) -> None:
    addr = _cluster_port(shoald)
    head = _raw(addr, b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 67108864\r\n\r\n")  # announced, never sent: refused at once
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    body = json.dumps({"type": "join", "token": "SWMTKN-1-ü-ß", "csr": "x"}).encode()
    answer = _raw(addr, b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"A valid join token is necessary to join this cluster" in answer
