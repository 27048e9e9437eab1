"""shoald's API comes up while its engine is still busy: a dockerd restoring containers on shoal's
networks waits for shoald's network plugin before it answers, so shoald must not wait for the engine
first (found by the chaos suite: a host started after a power loss stayed down for minutes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

from aiohttp import web

from shoal.api.server import CTX, make_app


async def _engine(path: Path, answer: asyncio.Event) -> asyncio.AbstractServer:
    """An engine that accepts connections but answers ``GET /version`` only once ``answer`` is set."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await answer.wait()
        body = json.dumps({"ApiVersion": "1.43"}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


async def test_api_starts_while_the_engine_does_not_answer_yet(tmp_path: Path) -> None:
    answer = asyncio.Event()
    server = await _engine(tmp_path / "engine.sock", answer)
    app = make_app(SimpleNamespace(engine_socket=str(tmp_path / "engine.sock")))  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    try:
        await asyncio.wait_for(runner.setup(), 2)  # hung until the engine answered
        proxy = app[CTX].proxy
        assert proxy.engine_api == (1, 41)  # assumed meanwhile
        answer.set()  # the engine is done restoring: its version is learned then
        for _ in range(200):
            if proxy.engine_api == (1, 43):
                break
            await asyncio.sleep(0.01)
        assert proxy.engine_api == (1, 43)
    finally:
        answer.set()
        await runner.cleanup()
        server.close()
