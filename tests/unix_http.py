"""A blocking HTTP client over a unix socket, for the tests and benchmarks that talk to shoald or dockerd
(benchmarks put this folder on their path)."""

from __future__ import annotations

import http.client
import json
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` that connects to a unix socket instead of a TCP address."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def request(sock: str, method: str, path: str, body: object = None, raw: bytes | None = None,
            timeout: float = 30) -> tuple[int, dict[str, str], object]:
    """One request; returns (status, headers, the body parsed as JSON, or as text when it is not JSON).

    ``body`` is sent as JSON; ``raw`` is sent as it is (for malformed-input tests).
    """
    conn = UnixHTTPConnection(sock, timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        try:
            parsed: object = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return resp.status, dict(resp.getheaders()), parsed
    finally:
        conn.close()
