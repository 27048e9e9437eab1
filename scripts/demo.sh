#!/usr/bin/env bash
# The seed's example on a 3-host swarm on this machine: `shoal lab up` (manager, worker1, worker2,
# each with its own dockerd and shoald), then `docker service create --name test-app --replicas=4`
# through the manager and `docker ps` on every host. Leaves the lab running (`make down` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
shoal=.venv/bin/shoal
section() { printf '\n== %s\n' "$*"; }

if [[ ! -f /var/lib/shoal-lab/lab.json ]]; then
  section "shoal lab up"
  $shoal lab up
fi
eval "$($shoal lab env manager)"
export DOCKER_HOST

section "docker node ls"
docker node ls
if docker service inspect test-app >/dev/null 2>&1; then
  docker service rm test-app >/dev/null
  sleep 2
fi
section "docker service create --name test-app --replicas=4 shoal/demo-web:latest"
quiet=()
[[ -t 1 ]] || quiet=(--quiet) # progress bars only on a terminal
docker service create "${quiet[@]}" --name test-app --replicas=4 shoal/demo-web:latest
section "docker service ls"
docker service ls
section "docker service ps test-app"
docker service ps test-app

for host in manager worker1 worker2; do
  engine="unix:///var/lib/shoal-lab/$host/docker.sock"
  section "$host: docker ps"
  docker -H "$engine" ps --format "table {{.ID}}\t{{.Status}}\t{{.Image}}\t{{.Names}}"
  for id in $(docker -H "$engine" ps -q --filter label=com.docker.swarm.service.name=test-app); do
    printf '%s answers: ' "$id"
    docker -H "$engine" exec "$id" wget -qO- http://127.0.0.1/
  done
done

cat <<MSG

The lab is up. Talk to it with the docker CLI:
  eval "\$($shoal lab env manager)"    # or worker1, worker2
  docker service ls
Faults: $shoal lab kill worker2 | start worker2 | partition worker1 | heal worker1
Remove everything: make down
MSG
