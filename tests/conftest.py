"""Shared pytest fixtures for shoal's tests."""

import docker
import pytest

ENGINE_URL = "unix:///var/run/docker.sock"
DEMO_IMAGES = ("shoal/demo-web:latest", "shoal/demo-busybox:latest")


@pytest.fixture(scope="session")
def docker_engine():
    """A docker-py client of the real engine, after checking that it answers and has the demo images.

    Checks only: it starts nothing. Fails (never skips) when the set-up is missing.
    """
    error = None
    try:
        client = docker.DockerClient(base_url=ENGINE_URL, timeout=30)
        client.ping()
    except Exception as exc:  # connection refused, missing socket, ...
        error = exc
    if error is not None:
        pytest.fail(
            f"no Docker engine answers on {ENGINE_URL} ({error}); run `make images` "
            "(it starts dockerd via scripts/ensure-dockerd.sh and builds the demo images)",
            pytrace=False,
        )
    missing = []
    for image in DEMO_IMAGES:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        client.close()
        pytest.fail(f"missing images {', '.join(missing)} on {ENGINE_URL}; run `make images`", pytrace=False)
    yield client
    client.close()
