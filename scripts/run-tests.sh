#!/usr/bin/env bash
# The whole suite (make test) in two streams side by side: the lab tests (tests/cluster: their own
# namespaces, dockerds and etcds) and the others (unit, then integration on the machine's dockerd and a
# local etcd). Most of a lab test's time is waiting for the swarm, so the two overlap well on two cores.
# The lab stream's output is printed when both are done. Exit status: 0 when both passed (pytest's 5,
# "no test collected", counts as passed).
set -u
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/pytest -q --durations=20)
lab_log=$(mktemp /tmp/shoal-lab-tests.XXXXXX.log)

"${PYTEST[@]}" tests/cluster >"$lab_log" 2>&1 &
lab_pid=$!
"${PYTEST[@]}" tests/unit tests/integration
others=$?
wait "$lab_pid"
lab=$?

echo
echo "==== lab tests (tests/cluster), run beside the others"
cat "$lab_log"
rm -f "$lab_log"
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
ok "$others" && ok "$lab" && exit 0
echo "make test: unit+integration exit $others, lab exit $lab"
exit 1
