"""``docker_gwbridge``: the engine-local bridge that gives task containers their way out (egress).

Docker creates it when a node joins a swarm, so that ``docker network ls`` shows it from then on; the
engine would otherwise make it only when the first container joins a network without a gateway. We
create it the same way at swarm init and join, with the options libnetwork gives it (no inter-container
traffic, masquerading on). An existing one, made by the engine or by the user, is left as it is.
"""

from __future__ import annotations

import logging

import aiohttp

from shoal.engine import Engine

log = logging.getLogger(__name__)

NAME = "docker_gwbridge"
OPTIONS = {
    "com.docker.network.bridge.name": NAME,
    "com.docker.network.bridge.enable_icc": "false",
    "com.docker.network.bridge.enable_ip_masquerade": "true",
}


async def ensure(engine: Engine) -> None:
    """Create ``docker_gwbridge`` on the engine unless it exists."""
    try:
        async with engine.session.get(f"http://docker/networks/{NAME}") as resp:
            if resp.status == 200:
                return
        body = {"Name": NAME, "Driver": "bridge", "CheckDuplicate": True, "Options": OPTIONS}
        async with engine.session.post("http://docker/networks/create", json=body) as resp:
            if resp.status not in (201, 409):
                log.warning("could not create %s: %s %s", NAME, resp.status, await resp.text())
    except aiohttp.ClientError as e:
        log.warning("could not create %s: %s", NAME, e)
