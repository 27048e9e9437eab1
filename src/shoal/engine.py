"""A client of the local Docker Engine's HTTP API over its unix socket, for the node's own calls that
want the raw API (JSON, log streams); task containers themselves are run through aiodocker
(shoal.agent.executor)."""

from __future__ import annotations

import aiohttp


class Engine:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Requests go to ``http://docker/<path>``."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def get_json(self, path: str) -> dict:
        async with self.session.get(f"http://docker{path}") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
