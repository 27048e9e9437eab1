"""Pass requests shoal does not answer to the local Docker Engine, untouched.

Plain and streaming responses go through an aiohttp client; hijacked connections (``docker exec``,
``attach``, ``run -it``: a request with ``Upgrade: tcp`` or to an attach/exec-start path) are spliced
byte for byte after the engine's response head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade", "host", "content-length"}
_HIJACK_PATH = re.compile(r"/(containers/[^/]+/attach|exec/[^/]+/start)\Z")
_VERSION = re.compile(r"/v(\d+)\.(\d+)(/.*)", re.S)
log = logging.getLogger(__name__)


def engine_path(path: str, engine_api: tuple[int, int]) -> str:
    """Cap a versioned path at the engine's API version (our clients may speak a newer one)."""
    m = _VERSION.fullmatch(path)
    if not m:
        return path
    ver = (int(m.group(1)), int(m.group(2)))
    if ver > engine_api:
        return f"/v{engine_api[0]}.{engine_api[1]}{m.group(3)}"
    return path


class EngineProxy:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None
        self.engine_api = (1, 41)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
            )
        return self._session

    async def detect_version(self, timeout: float = 5) -> bool:
        """Learn the engine's API version (requests for a newer one are passed on capped at it)."""
        try:
            ver = await asyncio.wait_for(self.get_json("/version"), timeout)
            major, minor = (int(x) for x in ver.get("ApiVersion", "1.41").split(".")[:2])
            self.engine_api = (major, minor)
            return True
        except (aiohttp.ClientError, ValueError, OSError, TimeoutError) as e:
            log.warning("could not learn the engine's API version (%s); assuming %d.%d until it answers",
                        e or type(e).__name__, *self.engine_api)
            return False

    async def learn_version(self, retry: float = 1.0) -> None:
        """:meth:`detect_version` until the engine answers. Never awaited before serving: an engine that is
        restoring containers on shoal's networks waits for this daemon's network plugin first."""
        while True:
            if await self.detect_version():
                return
            await asyncio.sleep(retry)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get_json(self, path: str) -> dict:
        async with self.session.get(f"http://docker{path}") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def forward_body(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Pass on a request whose body the caller has already read."""
        return await self.handle(request, body)

    async def handle(self, request: web.Request, body: bytes | None = None) -> web.StreamResponse:
        path = engine_path(request.rel_url.path, self.engine_api)
        if body is None and (request.headers.get("Upgrade") or (
                request.method == "POST" and _HIJACK_PATH.search(path))):
            return await self._hijack(request, path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        data: object = request.content if request.body_exists else None
        if body is not None:
            data = body
        elif request.headers.get("Content-Length") and data is not None:
            headers["Content-Length"] = request.headers["Content-Length"]
        try:
            upstream = await self.session.request(
                request.method, f"http://docker{path}", params=request.rel_url.query, headers=headers,
                data=data, allow_redirects=False, skip_auto_headers=("User-Agent", "Content-Type"))
        except aiohttp.ClientError as e:
            return web.json_response({"message": f"shoal: cannot reach the Docker Engine: {e}"}, status=502)
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            if upstream.headers.get("Content-Length") is not None:
                resp.content_length = int(upstream.headers["Content-Length"])
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            upstream.release()

    async def _hijack(self, request: web.Request, path: str) -> web.StreamResponse:
        body = await request.read()
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        qs = request.rel_url.raw_query_string
        lines = [f"{request.method} {path}{'?' + qs if qs else ''} HTTP/1.1", "Host: docker"]
        for k, v in request.headers.items():
            if k.lower() not in ("host", "content-length", "transfer-encoding"):
                lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        hdrs = [h.split(":", 1) for h in header_lines if ":" in h]
        if status not in (101, 200):  # an error: a normal response with the engine's body
            length = next((int(v) for k, v in hdrs if k.lower() == "content-length"), None)
            data = await (reader.readexactly(length) if length is not None else reader.read())
            writer.close()
            ctype = next((v.strip() for k, v in hdrs if k.lower() == "content-type"), "application/json")
            return web.Response(status=status, body=data, headers={"Content-Type": ctype})
        transport = request.transport
        assert transport is not None
        transport.write(head)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        class _Splice(asyncio.Protocol):
            """Bytes the client sends after the head go straight to the engine; a half-close is
            passed on, so the engine's output keeps flowing back."""

            def data_received(self, data: bytes) -> None:
                writer.write(data)

            def eof_received(self) -> bool:
                with contextlib.suppress(Exception):
                    if writer.can_write_eof():
                        writer.write_eof()
                return True

            def connection_lost(self, exc: Exception | None) -> None:
                if not done.done():
                    done.set_result(None)

        transport.set_protocol(_Splice())
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk or done.done():
                    break
                transport.write(chunk)
        finally:
            writer.close()
            transport.close()
        raise _Hijacked()


class _Hijacked(web.HTTPException):
    """Raised once a hijacked connection is over: there is no response left to send."""

    status_code = 101
