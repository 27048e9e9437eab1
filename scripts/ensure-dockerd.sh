#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock. If none does, start
# dockerd in the background (its pid in /run/shoal-dev/dockerd.pid, so that
# scripts/down.sh knows to stop it) and wait until it answers.
set -euo pipefail

sock=unix:///var/run/docker.sock
pidfile=/run/shoal-dev/dockerd.pid
log=/var/log/shoal-dockerd.log

engine_up() { docker -H "$sock" info >/dev/null 2>&1; }
engine_up && exit 0

command -v dockerd >/dev/null || { echo "ensure-dockerd: no dockerd; run 'make install'" >&2; exit 1; }
mkdir -p "$(dirname "$pidfile")"
echo "ensure-dockerd: starting dockerd (log: $log)"
setsid nohup dockerd --host "$sock" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"
for _ in $(seq 60); do
  if engine_up; then echo "ensure-dockerd: dockerd up (pid $pid)"; exit 0; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
echo "ensure-dockerd: dockerd did not answer on $sock; end of $log:" >&2
tail -n 20 "$log" >&2
kill "$pid" 2>/dev/null || true
rm -f "$pidfile"
exit 1
