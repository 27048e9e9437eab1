"""Label and option names shoal reads or writes, in one place.

The ``com.docker.swarm.*`` container labels are the ones Docker's own executor sets, so existing tools
(``docker ps --filter``, Portainer, Prometheus' docker discovery) recognise task containers.
"""

from __future__ import annotations

# task containers (Docker's names)
NODE_ID = "com.docker.swarm.node.id"
SERVICE_ID = "com.docker.swarm.service.id"
SERVICE_NAME = "com.docker.swarm.service.name"
TASK = "com.docker.swarm.task"
TASK_ID = "com.docker.swarm.task.id"
TASK_NAME = "com.docker.swarm.task.name"

# the engine-local twins of swarm networks (made through shoal's network plugin)
TWIN = "shoal.network"
TWIN_ID = "shoal.network.id"  # label and driver option: the swarm network's ID
PLUGIN_DRIVER = "shoal"  # the network and IPAM driver name of the twins

# overlay networks
VXLAN_ID = "com.docker.network.driver.overlay.vxlanid_list"
ENCRYPTED = "encrypted"  # the overlay driver option (`docker network create --opt encrypted`)

# scheduling: a service label that picks the placement strategy (spread, binpack)
STRATEGY = "shoal.strategy"
