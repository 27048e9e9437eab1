#!/usr/bin/env bash
# Undo scripts/demo.sh: remove the services, leave the swarm, stop shoald, and stop
# dockerd only if scripts/ensure-dockerd.sh started it. Safe to run twice.
set -euo pipefail
export DOCKER_HOST=unix:///run/shoal/shoal.sock
real=(docker -H unix:///var/run/docker.sock)

# stop PIDFILE NAME: stop the process named in PIDFILE (if its command line
# mentions NAME, so a reused pid is left alone), then remove PIDFILE.
stop() {
  local pidfile=$1 name=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if grep -qa "$name" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "down: stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  fi
  rm -f "$pidfile"
}

if docker version >/dev/null 2>&1; then
  services=$(docker service ls -q 2>/dev/null) || services=""
  if [[ -n $services ]]; then xargs docker service rm <<<"$services"; fi
  docker swarm leave --force || true
fi
stop /run/shoal/shoald.pid shoal

# Task containers shoald left behind on the real engine.
if "${real[@]}" info >/dev/null 2>&1; then
  "${real[@]}" ps -aq --filter label=com.docker.swarm.service.name | xargs -r "${real[@]}" rm -f
fi
stop /run/shoal-dev/dockerd.pid dockerd
