"""A small blocking Engine-API client over a unix socket, for the lab's chaos client and checks (the lab
imports nothing of shoal, so it brings its own)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from urllib.parse import quote


class UnixConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` to a unix socket instead of a TCP address."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class NoAnswer(Exception):
    """The request got no HTTP answer. ``sent`` is False when it could not even connect (the socket is
    missing or refuses): then it surely changed nothing; otherwise its outcome is unknown."""

    def __init__(self, msg: str, sent: bool = True) -> None:
        super().__init__(msg)
        self.sent = sent


def call(sock: str | Path, method: str, path: str, body: object = None,
         timeout: float = 20) -> tuple[int, object]:
    """One request; returns (status, body parsed as JSON, or text). Raises NoAnswer when nothing answered."""
    conn = UnixConnection(str(sock), timeout)
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        raise NoAnswer(f"{method} {path}: not sent: {type(exc).__name__}: {exc}", sent=False) from None
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        payload = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise NoAnswer(f"{method} {path}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()
    try:
        return resp.status, (json.loads(payload) if payload else None)
    except ValueError:
        return resp.status, payload.decode(errors="replace")


def get(sock: str | Path, path: str, timeout: float = 10) -> object:
    """GET path; the parsed body of a 200, NoAnswer otherwise."""
    status, body = call(sock, "GET", path, timeout=timeout)
    if status != 200:
        raise NoAnswer(f"GET {path}: {status} {message(body)}")
    return body


def filters(**f: list[str]) -> str:
    """The ``filters`` query value of the Engine API."""
    return quote(json.dumps(f))


def message(body: object) -> str:
    """The error message of an Engine-API answer (``{"message": ...}``), or the body as text."""
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return str(body)[:300]
