#!/usr/bin/env bash
# Start shoald if it is not running, then run a 4-replica shoal/demo-web service
# through it and show what the docker CLI sees. Leaves everything running
# (undo with scripts/down.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

pidfile=/run/shoal/shoald.pid
log=/var/log/shoald.log
export DOCKER_HOST=unix:///run/shoal/shoal.sock

shoald_up() { docker version >/dev/null 2>&1; }
section() { printf '\n== %s\n' "$*"; }

if ! shoald_up; then
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "demo: waiting for shoald (pid $(cat "$pidfile"))"
  else
    mkdir -p /run/shoal
    echo "demo: starting shoald (log: $log)"
    setsid nohup .venv/bin/shoal daemon </dev/null >"$log" 2>&1 &
    echo $! >"$pidfile"
  fi
  for _ in $(seq 60); do
    shoald_up && break
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 0.5
  done
  if ! shoald_up; then
    echo "demo: shoald does not answer on $DOCKER_HOST; end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
fi

if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') != active ]]; then
  section "docker swarm init"
  docker swarm init
fi
if docker service inspect test-app >/dev/null 2>&1; then
  section "docker service rm test-app"
  docker service rm test-app
fi
section "docker service create --name test-app --replicas 4 shoal/demo-web:latest"
quiet=()
[[ -t 1 ]] || quiet=(--quiet) # progress bars only on a terminal
docker service create "${quiet[@]}" --name test-app --replicas 4 shoal/demo-web:latest

tasks() { docker ps -q --filter label=com.docker.swarm.service.name=test-app; }
for _ in $(seq 60); do
  [[ $(tasks | wc -l) -ge 4 ]] && break
  sleep 0.5
done

section "docker service ls";         docker service ls
section "docker service ps test-app"; docker service ps test-app
section "docker node ls";            docker node ls
section "docker ps";                 docker ps

section "HTTP answers of the task containers"
for id in $(tasks); do
  answer=""
  for _ in 1 2 3 4 5; do
    answer=$(docker exec "$id" wget -qO- http://127.0.0.1/ 2>/dev/null) && break
    sleep 0.5
  done
  echo "$id: ${answer:-no answer}"
done
