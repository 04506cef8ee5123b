#!/usr/bin/env bash
# Runs the rhea interop tests against the rhea reference server (tools/reference-server.js):
# starts it on a free port, runs test/rhea*.test.js with AMQP_PORT pointing at it, stops it.
#   tools/run-reference.sh [extra node --test arguments]
# Exit status is the test run's.
set -euo pipefail

cd "$(dirname "$0")/.."

coproc SERVER { exec node tools/reference-server.js --port 0 --host 127.0.0.1; }
server_pid=$SERVER_PID
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT

line=""
if ! read -r -t 10 line <&"${SERVER[0]}" || [[ ! "$line" =~ ^listening\ ([0-9]+)$ ]]; then
  echo "reference server did not report 'listening <port>' within 10 s (got: '$line')" >&2
  exit 1
fi
port="${BASH_REMATCH[1]}"
echo "reference server pid $server_pid listening on 127.0.0.1:$port" >&2

status=0
AMQP_HOST=127.0.0.1 AMQP_PORT="$port" node --test "$@" test/rhea*.test.js || status=$?
exit "$status"
