"""A blocking HTTP client over a unix socket, for the tests and benchmarks that talk to shoald or dockerd
(benchmarks put this folder on their path)."""

from __future__ import annotations

import json

from shoal.lab.engine_api import UnixConnection

UnixHTTPConnection = UnixConnection  # the lab's (the lab imports nothing of shoal, so it holds the one copy)


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
