#!/bin/sh
# Default command of shoal/demo-web: busybox httpd in the foreground on ${PORT:-80},
# every page answering "Hello from <hostname>".
set -eu
echo "Hello from $(hostname)" >/www/index.html
# As PID 1 the shell must forward SIGTERM itself, or `docker stop` waits 10 s.
trap 'kill "$pid" 2>/dev/null; exit 0' TERM INT
httpd -f -v -p "${PORT:-80}" -h /www -c /etc/httpd.conf &
pid=$!
wait "$pid"
